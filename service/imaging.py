"""Uploaded bytes -> validated image frames, or a Problem saying what was wrong.

Order of checks, cheapest and safest first: the format is decided from the magic bytes (never the
file name or content type) against an allow-list; the header is parsed lazily and the pixel count,
frame count and volume size are checked before a single pixel is decoded; only then are pixels
decoded, with truncation an error. DICOM is read with pydicom (`force=False`, no DICOMDIR); the
dataset never leaves `_decode_dicom`, so patient tags cannot reach answers, logs or metrics.

DICOM memory is bounded by the upload, never by what its data claims: the file meta is read first and
the transfer syntax allow-listed; a deflated data set is inflated in steps against its own header
(service.dicom_inflate); no element but the pixel data may exceed DICOM_ELEMENT_BYTES; encapsulated
frames are counted and their codestream headers checked against Rows x Columns before any is decoded,
and frames are decoded one at a time, never more than NumberOfFrames.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pydicom
from PIL import Image, ImageFile, UnidentifiedImageError
from pydicom import uid
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments, generate_frames, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder, iter_pixels

from service.dicom_inflate import DicomTooLarge, MalformedDicom, inflate_data_set
from service.problems import Problem

__all__ = [
    "DecodedUpload",
    "DicomSource",
    "ImageLimits",
    "ImageRejected",
    "ImageShape",
    "decode_upload",
    "check_inflated_size",
    "dicom_series_uid",
    "probe_upload",
    "sniff_format",
]

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; the service must never decode a bomb,
# so the warning is an error for this process. Our own, lower limit is checked explicitly as well.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
if ImageFile.LOAD_TRUNCATED_IMAGES:  # a truncated scan must be refused, never padded with grey
    raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: the service refuses to run with it")
# pydicom's validation warnings quote element values (a patient's name among them) into logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP"}
_ACCEPTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B", "I"}
_KNOWN_OTHER_FORMATS = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"%PDF": "PDF",
    b"PK\x03\x04": "ZIP",
    b"\x1f\x8b": "gzip",
}
ACCEPTED = "PNG, JPEG, TIFF, BMP or DICOM"
# Real OCT headers are kilobytes; vendors' private elements (thumbnails, scan patterns) stay well below.
DICOM_ELEMENT_BYTES = 4 << 20
DICOM_HEADER_BYTES = 16 << 20
_NATIVE_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
)
# Encapsulated syntaxes are accepted only where this installation can decode them.
_ENCAPSULATED_SYNTAXES = tuple(
    syntax
    for syntax in (
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.RLELossless,
    )
    if get_decoder(syntax).is_available
)
TRANSFER_SYNTAXES = _NATIVE_SYNTAXES + _ENCAPSULATED_SYNTAXES
# The first bytes of one frame's codestream: JPEG SOI, JPEG 2000 codestream (SOC SIZ), JP2 signature box.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")


class ImageRejected(Problem):
    """An upload that is not an acceptable image; `reason` is its metrics label."""


def _invalid(detail: str) -> ImageRejected:
    return ImageRejected("invalid-image", detail, reason="invalid_image")


def _bomb(detail: str) -> ImageRejected:
    return ImageRejected("decompression-bomb", detail, reason="decompression_bomb")


@dataclass(frozen=True)
class ImageShape:
    """An upload as its header describes it, read before any pixel is decoded (probe_upload)."""

    width: int
    height: int
    frames: int

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


@dataclass(frozen=True)
class ImageLimits:
    max_image_pixels: int = 16_000_000
    max_frames: int = 256
    max_volume_pixels: int = 150_000_000


@dataclass(frozen=True, repr=False)
class DicomSource:
    """What a DICOM Structured Report on the upload must reference, and nothing more: its four UIDs
    and its frame count (service/dicom_sr.py). No patient attribute is kept: the report's patient
    module is left empty (see dicom_sr). It lives as long as the request's DecodedUpload; it never
    reaches a JSON answer, a record, a log or a metric (UIDs identify the patient's study), so its
    repr names no UID either."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frames: int

    def __repr__(self) -> str:
        return f"DicomSource(frames={self.frames}, uids=<withheld>)"


@dataclass(frozen=True)
class DecodedUpload:
    """The frames of one upload. Multi-frame DICOM is a volume; everything else has one frame."""

    format: str
    frames: list[Image.Image]
    width: int
    height: int
    input_sha256: str
    is_volume: bool = False
    # For volumes: a hash of the uploaded bytes, never a DICOM UID (UIDs identify the patient's study).
    volume_id: str | None = None
    # DICOM with valid UIDs only; for a report of this request (Accept: application/dicom), never stored.
    dicom_source: DicomSource | None = field(default=None, repr=False)
    # DICOM: (Manufacturer, ManufacturerModelName, SoftwareVersions) as sent, the device's, never a
    # patient's: counted for the new-device alarm (service/monitoring/drift.py), never stored.
    device: tuple[object, object, object] | None = field(default=None, repr=False)


def sniff_format(data: bytes) -> str:
    """The upload's format from its magic bytes: png, jpeg, tiff, bmp or dicom; else ImageRejected."""
    if not data:
        raise _invalid("the upload is empty")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    for magic, name in _KNOWN_OTHER_FORMATS.items():
        if data.startswith(magic):
            raise ImageRejected(
                "unsupported-media-type",
                f"{name} uploads are not accepted: send {ACCEPTED}",
                reason="unsupported_media_type",
            )
    raise ImageRejected(
        "unsupported-media-type",
        f"the upload is not a recognised image format: send {ACCEPTED} (DICOM with its 128-byte preamble "
        f"and DICM prefix)",
        reason="unsupported_media_type",
    )


def probe_upload(data: bytes, limits: ImageLimits) -> ImageShape:
    """The upload's size and frame count from its header alone, checked against the per-image limits:
    what the ingress budget (service/ingress/) is charged before a pixel is decoded. Raises the same
    ImageRejected as decode_upload for a header it would refuse."""
    kind = sniff_format(data)
    if kind == "dicom":
        return _probe_dicom(data, limits)
    with _open_raster(data, kind) as image:
        width, height = _raster_checks(image, _PIL_FORMATS[kind], limits)
    return ImageShape(width, height, 1)


def decode_upload(data: bytes, limits: ImageLimits, expected: ImageShape | None = None) -> DecodedUpload:
    """Validate and decode an upload. Raises ImageRejected (a Problem) for every bad input.
    `expected`: what probe_upload found (and the budget was charged for); a decode that finds
    another shape is refused."""
    kind = sniff_format(data)
    digest = hashlib.sha256(data).hexdigest()
    if kind == "dicom":
        upload = _decode_dicom(data, limits, digest)
    else:
        upload = _decode_raster(data, kind, limits, digest)
    found = ImageShape(upload.width, upload.height, len(upload.frames))
    if expected is not None and found != expected:
        raise _invalid(f"the image decodes to {found}, not the {expected} its header announced")
    return upload


def _check_size(width: int, height: int, frames: int, limits: ImageLimits) -> None:
    if width < 1 or height < 1:
        raise _invalid(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise _bomb(
            f"{width}x{height} = {width * height} pixels per frame exceeds the limit of "
            f"{limits.max_image_pixels} (KDOCT_MAX_IMAGE_PIXELS)"
        )
    if frames > limits.max_frames:
        raise _bomb(f"{frames} frames exceed the limit of {limits.max_frames} (KDOCT_MAX_FRAMES)")
    if width * height * frames > limits.max_volume_pixels:
        raise _bomb(
            f"{frames} frames of {width}x{height} exceed the volume limit of {limits.max_volume_pixels} "
            f"pixels (KDOCT_MAX_VOLUME_PIXELS)"
        )


def _open_raster(data: bytes, kind: str) -> Image.Image:
    """The image opened lazily (its header read, no pixel decoded)."""
    name = _PIL_FORMATS[kind]
    try:
        return Image.open(io.BytesIO(data), formats=[name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(f"the {name} image is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise _invalid(f"the {name} header is corrupt or incomplete") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise TypeError, KeyError... on corrupt headers
        raise _invalid(f"the {name} header cannot be read: {exc}") from None


def _raster_checks(image: Image.Image, name: str, limits: ImageLimits) -> tuple[int, int]:
    """Size, frame count and pixel mode from the header; (width, height)."""
    width, height = image.size
    _check_size(width, height, 1, limits)
    try:
        frames = getattr(image, "n_frames", 1)
        animated = getattr(image, "is_animated", False)
    except Exception as exc:  # noqa: BLE001 - as above (found by the decoder fuzz in tests/hostile)
        raise _invalid(f"the {name} file is corrupt: {exc}") from None
    if frames > 1 or animated:
        raise _invalid(
            f"the {name} file holds {frames} frames (animated or multi-page): send one B-scan per "
            f"image, or a multi-frame DICOM for a volume"
        )
    if image.mode not in _ACCEPTED_MODES:
        raise _invalid(f"{name} pixel mode {image.mode!r} is not supported: send 8- or 16-bit gray or RGB")
    return width, height


def _decode_raster(data: bytes, kind: str, limits: ImageLimits, digest: str) -> DecodedUpload:
    name = _PIL_FORMATS[kind]
    image = _open_raster(data, kind)
    with image:
        width, height = _raster_checks(image, name, limits)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb(f"the {name} image is too large to decode safely: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - as above, and MemoryError
            raise _invalid(f"the {name} pixel data is truncated or corrupt: {exc}") from None
        return DecodedUpload(format=kind, frames=[image], width=width, height=height, input_sha256=digest)


class _HeaderRead(Exception):  # noqa: N818 - not an error: stops inflating once the header is known
    def __init__(self, shape: ImageShape) -> None:
        self.shape = shape


def _read_dicom(data: bytes, limits: ImageLimits, *, header_only: bool = False) -> pydicom.Dataset:
    """The data set, read within the memory bounds of the module docstring. `header_only`: stop before
    the pixel data (a deflated data set raises _HeaderRead as soon as its image attributes are known)."""
    stream = io.BytesIO(data)
    stream.seek(132)  # preamble and DICM, checked by sniff_format
    meta = read_dataset(
        stream, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag.group != 2
    )
    syntax = str(meta.get("TransferSyntaxUID", "")).rstrip("\0 ")
    if not syntax:
        raise _invalid("the DICOM file meta information has no TransferSyntaxUID")
    if syntax not in TRANSFER_SYNTAXES:
        raise ImageRejected(
            "unsupported-media-type",
            f"DICOM transfer syntax {syntax} is not accepted: send one of {', '.join(TRANSFER_SYNTAXES)}",
            reason="unsupported_media_type",
        )
    if syntax != uid.DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), force=False, stop_before_pixels=header_only)

    def check_size(columns: int, rows: int, frames: int) -> None:
        _check_size(columns, rows, frames, limits)
        if header_only:
            raise _HeaderRead(ImageShape(columns, rows, frames))

    body = inflate_data_set(
        data[stream.tell() :],
        check_size,
        header_bytes=DICOM_HEADER_BYTES,
        element_bytes=DICOM_ELEMENT_BYTES,
    )
    dataset = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    dataset.file_meta = FileMetaDataset(meta)
    return dataset


def _check_elements(dataset: pydicom.Dataset) -> None:
    """Convert every element now and refuse oversized ones. pydicom converts values on first access:
    a corrupt value (an unknown VR, say) would raise later, outside the caller's try, as a 500."""
    for _element in dataset.file_meta.iterall():
        pass
    for element in dataset.iterall():
        value = element.value
        if element.tag != 0x7FE00010 and isinstance(value, (bytes, str)) and len(value) > DICOM_ELEMENT_BYTES:
            raise _bomb(
                f"DICOM element {element.tag} holds {len(value)} bytes, over the limit of "
                f"{DICOM_ELEMENT_BYTES} for an element other than the pixel data"
            )


def _check_encapsulated(pixel_data: bytes, frames: int, rows: int, columns: int, syntax: str) -> None:
    """Frame count and each frame's codestream size against the header, before any frame is decoded:
    a decoder sizes its output from the codestream, not from Rows x Columns."""
    stream = io.BytesIO(pixel_data)
    offsets = parse_basic_offsets(stream)
    if offsets and len(offsets) != frames:
        raise _invalid(f"the DICOM offset table lists {len(offsets)} frames; NumberOfFrames says {frames}")
    # Counted as they stream past: no copy of the fragments is kept. RLE has one fragment per frame
    # (PS3.5 Annex G); the other codecs' frames begin with their codestream's start marker.
    rle = syntax == uid.RLELossless
    starts = sum(1 for fragment in generate_fragments(stream) if rle or fragment.startswith(_FRAME_STARTS))
    if starts > frames:
        raise _invalid(f"the DICOM pixel data holds {starts} frames; NumberOfFrames says {frames}")
    if syntax == uid.RLELossless:
        return  # RLE output is sized from Rows x Columns by pydicom itself
    for index, frame in enumerate(generate_frames(pixel_data, number_of_frames=frames)):
        if index >= frames:
            break
        try:
            with Image.open(io.BytesIO(frame)) as codestream:  # lazy: reads the header, not the pixels
                size = codestream.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _bomb(f"DICOM frame {index} is too large to decode safely") from None
        if size != (columns, rows):
            raise _invalid(
                f"DICOM frame {index} is {size[0]}x{size[1]}; the header promises {columns}x{rows}"
            )


@contextmanager
def _dicom_errors() -> Iterator[None]:
    """Reading errors as ImageRejected. Messages name DICOM attributes, never their values: a value may
    identify the patient."""
    try:
        yield
    except (ImageRejected, _HeaderRead):
        raise
    except DicomTooLarge as exc:
        raise _bomb(str(exc)) from None
    except MalformedDicom as exc:
        raise _invalid(str(exc)) from None
    except InvalidDicomError:
        raise _invalid("the DICOM file is not valid (no DICM preamble or file meta information)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt files
        raise _invalid(f"the DICOM file is corrupt ({type(exc).__name__})") from None


@dataclass(frozen=True)
class _ImageAttributes:
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str


def _image_attributes(dataset: pydicom.Dataset) -> _ImageAttributes:
    try:
        bits_allocated = int(dataset.BitsAllocated)
        return _ImageAttributes(
            rows=int(dataset.Rows),
            columns=int(dataset.Columns),
            frames=int(dataset.get("NumberOfFrames", 1) or 1),
            samples=int(dataset.get("SamplesPerPixel", 1)),
            bits_allocated=bits_allocated,
            bits_stored=int(dataset.get("BitsStored", bits_allocated)),
            signed=int(dataset.get("PixelRepresentation", 0)) == 1,
            photometric=str(dataset.get("PhotometricInterpretation", "MONOCHROME2")),
        )
    except (AttributeError, TypeError, ValueError):
        raise _invalid(
            "the DICOM image attributes (Rows, Columns, BitsAllocated...) are missing or invalid"
        ) from None


def _refuse_dicomdir(dataset: pydicom.Dataset) -> None:
    meta_class = str(getattr(dataset.file_meta, "MediaStorageSOPClassUID", ""))
    if meta_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        raise ImageRejected(
            "unsupported-media-type",
            "a DICOMDIR is not accepted: send the image file itself",
            reason="unsupported_media_type",
        )


def _probe_dicom(data: bytes, limits: ImageLimits) -> ImageShape:
    with _dicom_errors():
        try:
            dataset = _read_dicom(data, limits, header_only=True)
        except _HeaderRead as read:
            return read.shape
        _check_elements(dataset)
    _refuse_dicomdir(dataset)
    image = _image_attributes(dataset)
    _check_size(image.columns, image.rows, image.frames, limits)
    return ImageShape(image.columns, image.rows, image.frames)


# A data set may hold, besides its header, up to 4 bytes a pixel (8-bit RGBA or 16-bit with room).
_DATA_SET_BYTES_PER_PIXEL = 4
_INFLATE_STEP = 1 << 20


def check_inflated_size(data: bytes, shape: ImageShape) -> None:
    """For a deflated DICOM that probe_upload accepted as `shape`: inflate it all in 1 MiB steps, keeping
    nothing, and refuse it (a bomb) when it inflates beyond its header's pixels plus DICOM_HEADER_BYTES.
    The probe stops at the header, so zeros deflated after the pixel data pass it; the DICOM node
    stores an instance for later, and must refuse such a one before it answers the C-STORE."""
    stream = io.BytesIO(data)
    stream.seek(132)
    meta = read_dataset(
        stream, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag.group != 2
    )
    if str(meta.get("TransferSyntaxUID", "")).rstrip("\0 ") != uid.DeflatedExplicitVRLittleEndian:
        return
    limit = shape.pixels * _DATA_SET_BYTES_PER_PIXEL + DICOM_HEADER_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = memoryview(data)[stream.tell() :], 0
    try:
        while pending:
            total += len(inflater.decompress(pending, _INFLATE_STEP))
            pending = inflater.unconsumed_tail
            if total > limit:
                raise _bomb(
                    f"the deflated DICOM inflates beyond {limit} bytes, more than its header's "
                    f"{shape.frames} frame(s) of {shape.width}x{shape.height} can hold"
                )
    except zlib.error:
        raise _invalid("the deflated DICOM data set is corrupt") from None


def dicom_series_uid(data: bytes) -> str | None:
    """The SeriesInstanceUID of a DICOM file that probe_upload accepted (the DICOM node groups instances
    by it), read from at most DICOM_HEADER_BYTES of its data set, inflated or not; None when it is
    missing, unreadable or not a valid UID."""
    try:
        stream = io.BytesIO(data)
        stream.seek(132)
        meta = read_dataset(
            stream,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != 2,
        )
        syntax = str(meta.get("TransferSyntaxUID", "")).rstrip("\0 ")
        rest = memoryview(data)[stream.tell() :]
        if syntax == uid.DeflatedExplicitVRLittleEndian:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(rest, DICOM_HEADER_BYTES)
        else:
            head = bytes(rest[:DICOM_HEADER_BYTES])
        dataset = read_dataset(
            io.BytesIO(head),
            is_implicit_VR=syntax == uid.ImplicitVRLittleEndian,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag > 0x0020000E,
        )
        value = str(dataset.get("SeriesInstanceUID", "") or "").rstrip("\0 ")
    except Exception:  # noqa: BLE001 - any unreadable header: the caller refuses the instance
        return None
    return value if uid.UID(value).is_valid else None


def _decode_dicom(data: bytes, limits: ImageLimits, digest: str) -> DecodedUpload:
    with _dicom_errors():
        dataset = _read_dicom(data, limits)
        _check_elements(dataset)
    _refuse_dicomdir(dataset)
    if "PixelData" not in dataset:
        raise _invalid("the DICOM file holds no pixel data (PixelData): send an image object")
    image = _image_attributes(dataset)
    rows, columns, frames, samples = image.rows, image.columns, image.frames, image.samples
    bits_allocated, bits_stored = image.bits_allocated, image.bits_stored
    signed, photometric = image.signed, image.photometric
    if frames < 1 or rows < 1 or columns < 1:
        raise _invalid(f"the DICOM image has {frames} frame(s) of {columns}x{rows} pixels: nothing to read")
    _check_size(columns, rows, frames, limits)
    if samples not in (1, 3) or bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise _invalid(
            f"DICOM with SamplesPerPixel={samples}, BitsAllocated={bits_allocated}, BitsStored={bits_stored} "
            f"is not supported: send 8- or 16-bit grayscale or 8-bit RGB"
        )
    if samples == 3 and (frames > 1 or bits_allocated != 8):
        raise _invalid("colour DICOM is accepted only as a single 8-bit frame; volumes must be grayscale")
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    expected = (rows, columns) if samples == 1 else (rows, columns, samples)
    images = []
    try:
        if uid.UID(syntax).is_encapsulated:
            _check_encapsulated(dataset.PixelData, frames, rows, columns, syntax)
        # One frame at a time, and never more than NumberOfFrames, whatever the pixel data holds.
        for index, frame in enumerate(iter_pixels(dataset, allow_excess_frames=False)):
            if index >= frames:
                break
            if frame.shape != expected:
                raise _invalid(f"DICOM frame {index} has shape {frame.shape}; the header promises {expected}")
            images.append(_dicom_frame(frame, samples, bits_stored, signed, photometric))
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - missing codecs, short pixel data, bad encapsulation
        raise _invalid(
            f"the DICOM pixel data cannot be decoded (transfer syntax {syntax}, {type(exc).__name__})"
        ) from None
    source = _dicom_source(dataset, frames)
    device = _dicom_device(dataset)
    del dataset
    if len(images) != frames:
        raise _invalid(f"the DICOM pixel data holds {len(images)} frames; NumberOfFrames says {frames}")
    is_volume = frames > 1
    volume_id = hashlib.sha256(b"kdoct-volume\0" + digest.encode()).hexdigest()[:32] if is_volume else None
    return DecodedUpload(
        format="dicom",
        frames=images,
        width=columns,
        height=rows,
        input_sha256=digest,
        is_volume=is_volume,
        volume_id=volume_id,
        dicom_source=source,
        device=device,
    )


def _dicom_device(dataset: pydicom.Dataset) -> tuple[object, object, object]:
    """Manufacturer, ManufacturerModelName, SoftwareVersions, each None when absent or unreadable:
    pydicom parses a value only when it is read, and a malformed device attribute must not refuse an
    image that decoded."""
    values = []
    for keyword in ("Manufacturer", "ManufacturerModelName", "SoftwareVersions"):
        try:
            values.append(dataset.get(keyword))
        except Exception:  # noqa: BLE001 - whatever pydicom raises for a value it cannot parse
            values.append(None)
    return values[0], values[1], values[2]


def _dicom_source(dataset: pydicom.Dataset, frames: int) -> DicomSource | None:
    """The UIDs a report must reference, or None when one is missing or not a valid UID: the JSON
    answer needs none of them, so their absence refuses only a report (406), never the upload."""
    values = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = str(dataset.get(keyword, "") or "").rstrip("\0 ")
        if not uid.UID(value).is_valid:
            return None
        values.append(value)
    return DicomSource(*values, frames=frames)


def _dicom_frame(
    frame: np.ndarray, samples: int, bits_stored: int, signed: bool, photometric: str
) -> Image.Image:
    if samples == 3:
        return Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB")
    top = float(2**bits_stored - 1)
    if frame.dtype == np.uint8 and bits_stored == 8:
        plane = frame if photometric != "MONOCHROME1" else 255 - frame
        return Image.fromarray(np.ascontiguousarray(plane), mode="L")
    # Deeper data keeps its precision as float in [0, 1], which kdoct.preprocess takes as 'F'.
    values = frame.astype(np.float32)
    if signed:
        values += 2 ** (bits_stored - 1)
    values = np.clip(values / top, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return Image.fromarray(values, mode="F")
