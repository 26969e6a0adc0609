"""The hostile-upload corpus: every kind of bad (or merely unusual) upload a clinical service meets,
built in code from real B-scans at test time (no binary blobs in the repository).

Each `Case` says what it sends and which statuses are right for it. Every case must get an answer
below 500; most must get one precise 4xx. Cases that are unusual but valid (CMYK JPEG, 16-bit PNG,
wrong content type) must be classified (200).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["Case", "Scan", "build_corpus", "deflated_dicom", "dicom_bytes", "jpeg_dicom", "png_chunk"]

OK = frozenset({200})
TOO_LARGE = frozenset({413})
UNSUPPORTED = frozenset({415})
INVALID = frozenset({422})


class Scan:
    """One real B-scan in the encodings the cases start from (built once, on first use)."""

    def __init__(self, path: Path) -> None:
        self.jpeg = path.read_bytes()
        with Image.open(path) as opened:
            small = opened.convert("L").resize((64, 64))
        self.small = small
        self.png = _encode(small, "PNG")
        self.bmp = _encode(small, "BMP")
        self.gray = np.asarray(small)
        self.frames = np.stack([self.gray, self.gray])


@dataclass(frozen=True)
class Case:
    """One hostile upload. `build(scan)` gives the httpx keyword arguments (files, data, params,
    content, headers), built only when the case runs; `raw(scan)` instead gives the head of a request
    sent on a bare socket, followed by `body_bytes` zeros (chunked or not)."""

    name: str
    expected: frozenset[int]
    build: Callable[[Scan], dict] | None = None
    raw: Callable[[Scan], bytes] | None = None
    body_bytes: int = 0
    chunked: bool = False


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of `width`x`height` zeros: a few hundred KB that would decode to width*height bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def _png_text_bomb() -> bytes:
    """A valid small PNG whose zTXt chunk inflates to 64 MB of text."""
    small = _encode(Image.new("L", (8, 8)), "PNG")
    text = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)
    return small[:33] + png_chunk(b"zTXt", text) + small[33:]


def _tiff(width: int, height: int, strip: bytes, compression: int = 1) -> bytes:
    """A minimal little-endian one-strip 8-bit grey TIFF with whatever size its header claims."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, compression),
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets: patched below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, len(strip)),  # StripByteCounts
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    entries[5] = (273, 4, 1, data_offset)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + strip


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its SOF0 frame header rewritten to claim `width`x`height`."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _bmp_with_size(bmp: bytes, width: int, height: int) -> bytes:
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def dicom_bytes(
    frames: np.ndarray | None,
    *,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    preamble: bytes | None = None,
    transfer_syntax: str | None = None,
    pixel_data: bytes | None = None,
    number_of_frames: int | None = None,
    bits_allocated: int | None = None,
    dicomdir: bool = False,
) -> bytes:
    """An OCT DICOM; each keyword breaks it in one way. frames=None leaves PixelData out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "Hostile^Patient"
    dataset.PatientID = "HOSTILE-0001"
    dataset.Modality = "OPT"
    if dicomdir:
        record = Dataset()
        record.DirectoryRecordType = "IMAGE"
        record.ReferencedFileID = ["IMAGES", "IM0001"]
        dataset.DirectoryRecordSequence = Sequence([record])
    if frames is not None:
        bits = bits_allocated or (16 if frames.dtype == np.uint16 else 8)
        dataset.Rows, dataset.Columns = frames.shape[1], frames.shape[2]
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = bits
        dataset.BitsStored = bits
        dataset.HighBit = bits - 1
        dataset.PixelRepresentation = 0
        if number_of_frames is not None or len(frames) > 1:
            dataset.NumberOfFrames = number_of_frames or len(frames)
        dataset.PixelData = pixel_data if pixel_data is not None else frames.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if preamble is not None:
        data = preamble.ljust(128, b"\x00")[:128] + data[128:]
    return data


def _body_offset(dicom: bytes) -> int:
    """Where the data set starts: after the file meta, whose group length is its first element."""
    return 132 + 12 + struct.unpack_from("<I", dicom, 140)[0]


def _private_element(length: int) -> tuple[bytes, bytes]:
    """A private creator and the head of a private OB element of `length` bytes, in group 7FDF (just
    before the pixel data), explicit VR little endian."""
    creator = struct.pack("<HH", 0x7FDF, 0x0010) + b"LO" + struct.pack("<H", 6) + b"KDOCT "
    head = struct.pack("<HH", 0x7FDF, 0x1000) + b"OB\x00\x00" + struct.pack("<I", length)
    return creator, head


def deflated_dicom(frames: np.ndarray, *, private_zeros: int = 0, trailing_zeros: int = 0) -> bytes:
    """A Deflated Explicit VR Little Endian OCT DICOM, optionally with a private element of
    `private_zeros` zero bytes before the pixel data or `trailing_zeros` zero bytes after it, deflated in
    1 MiB steps (a 1 GiB element deflates to about 1 MB, as in the reported bomb)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    native = dicom_bytes(frames)
    body = native[_body_offset(native) :]
    pixel = body.rfind(b"\xe0\x7f\x10\x00")
    deflated = dicom_bytes(frames, transfer_syntax=DeflatedExplicitVRLittleEndian)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(body[:pixel])]
    if private_zeros:
        parts.append(compressor.compress(b"".join(_private_element(private_zeros))))
        parts += [compressor.compress(zeros) for _ in range(private_zeros >> 20)]
    parts.append(compressor.compress(body[pixel:]))
    parts += [compressor.compress(zeros) for _ in range(trailing_zeros >> 20)]
    parts.append(compressor.flush())
    return deflated[: _body_offset(deflated)] + b"".join(parts)


def _native_with_private(frames: np.ndarray, length: int) -> bytes:
    """An Explicit VR Little Endian OCT DICOM with a private OB element of `length` zero bytes."""
    native = dicom_bytes(frames)
    pixel = native.rfind(b"\xe0\x7f\x10\x00")
    creator, head = _private_element(length)
    return native[:pixel] + creator + head + bytes(length) + native[pixel:]


def jpeg_dicom(frames: list[bytes], number_of_frames: int, offset_table: bool = False) -> bytes:
    """A JPEG Baseline OCT DICOM of 64x64 frames whose pixel data holds `frames` (one fragment each)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    shape = np.zeros((number_of_frames, 64, 64), dtype=np.uint8)
    return dicom_bytes(
        shape,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate(frames, has_bot=offset_table),
        number_of_frames=number_of_frames,
    )


def _multipart_head(length: int | None) -> bytes:
    lines = [
        "POST /classify HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
    ]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _upload(name: str, content: bytes, content_type: str = "application/octet-stream") -> dict:
    return {"files": {"file": (name, content, content_type)}}


def _file(
    name: str,
    expected: frozenset[int],
    make: Callable[[Scan], bytes],
    filename: str = "scan.bin",
    content_type: str = "image/jpeg",
) -> Case:
    return Case(name, expected, build=lambda scan: _upload(filename, make(scan), content_type))


def _pages(count: int) -> bytes:
    pages = [Image.new("L", (8, 8), color=i % 256) for i in range(count)]
    return _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), color=i) for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _bad_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[29] ^= 0xFF  # the IHDR chunk's CRC
    return bytes(data)


BIG_BODY = 100 << 20
BOUNDARY = "hostileboundary"


def build_corpus() -> list[Case]:
    """The corpus: cheap to build (payloads are made when a case runs)."""
    return [
        # Empty, truncated and corrupt uploads.
        _file("zero-bytes", INVALID, lambda s: b""),
        _file("truncated-jpeg", INVALID, lambda s: s.jpeg[: len(s.jpeg) // 2], "scan.jpeg"),
        _file("jpeg-markers-only", INVALID, lambda s: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "scan.jpeg"),
        _file("truncated-png", INVALID, lambda s: s.png[: len(s.png) // 2], "scan.png"),
        _file("png-bad-crc", INVALID, lambda s: _bad_crc(s.png), "scan.png"),
        _file("truncated-bmp", INVALID, lambda s: s.bmp[: len(s.bmp) // 3], "scan.bmp"),
        # Decompression bombs: refused from the header, before a pixel is decoded.
        _file("png-bomb-144-megapixel", TOO_LARGE, lambda s: _png_bomb(12_000, 12_000), "scan.png"),
        _file("png-ztxt-text-bomb", INVALID | OK, lambda s: _png_text_bomb(), "scan.png"),
        _file(
            "tiff-bomb-2500-megapixel",
            TOO_LARGE,
            lambda s: _tiff(50_000, 50_000, zlib.compress(bytes(4096)), 8),
        ),
        _file("jpeg-claims-65000x65000", TOO_LARGE, lambda s: _jpeg_with_size(s.jpeg, 65_000, 65_000)),
        _file(
            "bmp-claims-100000x100000", TOO_LARGE | INVALID, lambda s: _bmp_with_size(s.bmp, 100_000, 100_000)
        ),
        _file(
            "bmp-negative-width", INVALID | TOO_LARGE, lambda s: _bmp_with_size(s.bmp, -64, 64), "scan.bmp"
        ),
        _file("tiff-zero-width", INVALID, lambda s: _tiff(0, 64, bytes(64)), "scan.tif"),
        # Multi-image and unusual pixel formats.
        _file("tiff-1000-pages", INVALID | TOO_LARGE, lambda s: _pages(1000), "scan.tif"),
        _file("animated-gif", UNSUPPORTED, lambda s: _animated_gif(), "scan.gif"),
        _file("tiff-float32", INVALID, lambda s: _encode(Image.fromarray(s.gray.astype(np.float32)), "TIFF")),
        _file("cmyk-jpeg", OK, lambda s: _encode(s.small.convert("CMYK"), "JPEG"), "scan.jpeg"),
        _file("png-16-bit", OK, lambda s: _encode(Image.fromarray(s.gray.astype(np.uint16) * 257), "PNG")),
        _file("png-rgba", OK, lambda s: _encode(s.small.convert("RGBA"), "PNG"), "scan.png"),
        _file("png-1x1", OK | INVALID, lambda s: _encode(Image.new("L", (1, 1)), "PNG"), "scan.png"),
        # Wrong types, whatever the file name or the declared content type says.
        _file("jpeg-sent-as-pdf", OK, lambda s: s.jpeg, "report.pdf", "application/pdf"),
        _file("elf-named-jpeg", UNSUPPORTED, lambda s: b"\x7fELF\x02\x01\x01" + bytes(200), "scan.jpeg"),
        _file(
            "windows-exe-named-png",
            UNSUPPORTED,
            lambda s: b"MZ\x90\x00" + bytes(300),
            "scan.png",
            "image/png",
        ),
        _file("pdf", UNSUPPORTED, lambda s: b"%PDF-1.7\n" + bytes(200), "scan.pdf"),
        _file("zip", UNSUPPORTED, lambda s: b"PK\x03\x04" + bytes(200), "scan.zip"),
        _file(
            "svg-with-script",
            UNSUPPORTED,
            lambda s: b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>",
        ),
        _file("webp", UNSUPPORTED, lambda s: _encode(s.small, "WEBP"), "scan.webp", "image/webp"),
        _file("random-bytes", UNSUPPORTED, lambda s: np.random.default_rng(7).bytes(4096)),
        # DICOM.
        _file("dicom-without-pixels", INVALID, lambda s: dicom_bytes(None), "scan.dcm"),
        _file(
            "dicomdir",
            UNSUPPORTED,
            lambda s: dicom_bytes(None, sop_class="1.2.840.10008.1.3.10", dicomdir=True),
        ),
        _file("dicom-png-polyglot-preamble", INVALID, lambda s: dicom_bytes(s.frames, preamble=s.png[:128])),
        _file(
            "dicom-tiff-polyglot-preamble",
            INVALID,
            lambda s: dicom_bytes(s.frames, preamble=b"II*\x00\x08\x00\x00\x00"),
        ),
        _file("dicom-short-pixel-data", INVALID, lambda s: dicom_bytes(s.frames, pixel_data=bytes(100))),
        _file(
            "dicom-claims-100000-frames", TOO_LARGE, lambda s: dicom_bytes(s.frames, number_of_frames=100_000)
        ),
        _file("dicom-32-bit", INVALID, lambda s: dicom_bytes(s.frames.astype(np.uint32), bits_allocated=32)),
        _file(
            "dicom-jpeg-syntax-garbage-pixels",
            INVALID,
            lambda s: dicom_bytes(
                s.frames[:1], transfer_syntax="1.2.840.10008.1.2.4.50", pixel_data=b"\xfe\xff\x00\xe0" * 8
            ),
        ),
        # DICOM whose memory would be chosen by the upload: refused before it is spent.
        _file("dicom-deflated-valid", OK, lambda s: deflated_dicom(s.frames), "scan.dcm"),
        _file(
            "dicom-deflate-bomb-1-gib-private",
            TOO_LARGE,
            lambda s: deflated_dicom(s.frames, private_zeros=1 << 30),
        ),
        _file(
            "dicom-deflate-bomb-512-mib-trailer",
            TOO_LARGE,
            lambda s: deflated_dicom(s.frames, trailing_zeros=512 << 20),
        ),
        _file("dicom-6-mib-private-element", TOO_LARGE, lambda s: _native_with_private(s.frames, 6 << 20)),
        _file(
            "dicom-jpeg-200-frames-number-of-frames-2",
            INVALID,
            lambda s: jpeg_dicom([_encode(s.small, "JPEG")] * 200, number_of_frames=2),
        ),
        _file(
            "dicom-jpeg-offset-table-200-frames-number-of-frames-2",
            INVALID,
            lambda s: jpeg_dicom([_encode(s.small, "JPEG")] * 200, number_of_frames=2, offset_table=True),
        ),
        _file(
            "dicom-jpeg-frame-65000x65000-header-64x64",
            INVALID | TOO_LARGE,
            lambda s: jpeg_dicom(
                [_jpeg_with_size(_encode(s.small, "JPEG"), 65_000, 65_000)], number_of_frames=1
            ),
        ),
        _file(
            "dicom-jpeg-valid", OK, lambda s: jpeg_dicom([_encode(s.small, "JPEG")] * 2, number_of_frames=2)
        ),
        _file(
            "dicom-big-endian-syntax",
            UNSUPPORTED,
            lambda s: dicom_bytes(s.frames, transfer_syntax="1.2.840.10008.1.2.2"),
        ),
        # Malformed requests.
        Case(
            "no-file-field",
            INVALID,
            build=lambda s: {"files": {"image": ("scan.jpeg", s.jpeg, "image/jpeg")}},
        ),
        Case(
            "not-multipart",
            INVALID | UNSUPPORTED,
            build=lambda s: {"content": s.jpeg, "headers": {"Content-Type": "image/jpeg"}},
        ),
        Case(
            "broken-multipart-boundary",
            INVALID | frozenset({400}),
            build=lambda s: {
                "content": b"--nope\r\nContent-Disposition: form-data; name=file\r\n\r\nabc",
                "headers": {"Content-Type": "multipart/form-data; boundary=other"},
            },
        ),
        Case(
            "multipart-1000-parts",
            frozenset({200, 400, 413, 422}),
            build=lambda s: {**_upload("scan.jpeg", s.jpeg), "data": {f"field{i}": "x" for i in range(1000)}},
        ),
        Case(
            "bad-query-parameter",
            INVALID,
            build=lambda s: {**_upload("scan.jpeg", s.jpeg), "params": {"second_opinion": "maybe"}},
        ),
        _file("path-traversal-filename", OK, lambda s: s.jpeg, "../../../../etc/passwd\u202e.jpeg"),
        Case(
            "oversized-request-id",
            OK,
            build=lambda s: {**_upload("scan.jpeg", s.jpeg), "headers": {"X-Request-ID": "x" * 4096}},
        ),
        Case("declared-100-mb-body", TOO_LARGE, raw=lambda s: _multipart_head(BIG_BODY), body_bytes=BIG_BODY),
        Case(
            "chunked-100-mb-body",
            TOO_LARGE,
            raw=lambda s: _multipart_head(None),
            body_bytes=BIG_BODY,
            chunked=True,
        ),
        Case(
            "invalid-content-length",
            frozenset({400}),
            raw=lambda s: b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12abc\r\n\r\n",
        ),
    ]
