"""service.imaging on real B-scans and on every kind of bad upload."""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kdoct.preprocess import PreprocessSpec, preprocess_array
from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, encode, jpeg_gray, make_dicom
from service.imaging import ImageLimits, ImageRejected, decode_upload, sniff_format

LIMITS = ImageLimits(max_image_pixels=4_000_000, max_frames=16, max_volume_pixels=20_000_000)
SPEC = PreprocessSpec(input_size=(64, 64))


def rejected(data: bytes, limits: ImageLimits = LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        decode_upload(data, limits)
    return caught.value


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_real_jpeg_decodes_to_one_frame_with_its_size(jpeg_paths):
    data = jpeg_paths[0].read_bytes()
    upload = decode_upload(data, LIMITS)
    assert upload.format == "jpeg"
    assert len(upload.frames) == 1 and not upload.is_volume and upload.volume_id is None
    with Image.open(jpeg_paths[0]) as image:
        assert (upload.width, upload.height) == image.size
    assert upload.input_sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_give_the_same_tensor_as_the_source(jpeg_paths, fmt):
    gray = Image.fromarray(jpeg_gray(jpeg_paths[1]))
    upload = decode_upload(encode(gray, fmt), LIMITS)
    assert upload.format == fmt.lower()
    np.testing.assert_array_equal(preprocess_array(upload.frames[0], SPEC), preprocess_array(gray, SPEC))


def test_sixteen_bit_png_keeps_its_depth(jpeg_paths):
    gray = jpeg_gray(jpeg_paths[2]).astype(np.uint16) * 257  # 8-bit values spread over 16 bits
    upload = decode_upload(encode(Image.fromarray(gray), "PNG"), LIMITS)
    assert upload.frames[0].mode.startswith("I")
    expected = preprocess_array(Image.fromarray(jpeg_gray(jpeg_paths[2])), SPEC)
    # 8-bit resizing rounds to whole grey levels, float resizing does not: at most one level, over std.
    np.testing.assert_allclose(preprocess_array(upload.frames[0], SPEC), expected, atol=1 / 255 / 0.225)


def test_rgb_jpeg_is_accepted(jpeg_paths):
    with Image.open(jpeg_paths[0]) as image:
        rgb = image.convert("RGB")
    assert decode_upload(encode(rgb, "JPEG"), LIMITS).frames[0].mode == "RGB"


def test_single_frame_dicom_matches_the_jpeg_pixels(jpeg_paths):
    pixels = jpeg_gray(jpeg_paths[0])
    upload = decode_upload(make_dicom([pixels]), LIMITS)
    assert upload.format == "dicom" and not upload.is_volume and len(upload.frames) == 1
    np.testing.assert_array_equal(np.asarray(upload.frames[0]), pixels)


def test_multi_frame_dicom_is_a_volume_with_a_hash_id(jpeg_paths):
    frames = [jpeg_gray(path) for path in jpeg_paths[:3]]
    shape = frames[0].shape
    frames = [frame for frame in frames if frame.shape == shape]
    data = make_dicom(frames)
    upload = decode_upload(data, LIMITS)
    assert upload.is_volume and len(upload.frames) == len(frames) > 1
    assert len(upload.volume_id) == 32 and upload.volume_id not in data.decode("latin-1")
    for frame, pixels in zip(upload.frames, frames, strict=True):
        np.testing.assert_array_equal(np.asarray(frame), pixels)


def test_sixteen_bit_dicom_is_scaled_not_truncated(jpeg_paths):
    pixels = jpeg_gray(jpeg_paths[0]).astype(np.uint16) * 257
    frame = decode_upload(make_dicom([pixels]), LIMITS).frames[0]
    assert frame.mode == "F"
    np.testing.assert_allclose(np.asarray(frame), pixels / 65535.0, atol=1e-6)


def test_sniffing_ignores_names_and_decides_from_bytes():
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 10) == "png"
    assert sniff_format(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"


@pytest.mark.parametrize(
    ("data", "slug", "words"),
    [
        (b"", "invalid-image", "empty"),
        (b"this is not an image at all, just text" * 4, "unsupported-media-type", "not a recognised"),
        (b"%PDF-1.7 something", "unsupported-media-type", "PDF"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "invalid-image", "PNG"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00" * 40, "invalid-image", "DICOM"),
    ],
)
def test_garbage_is_refused_with_a_clear_message(data, slug, words):
    error = rejected(data)
    assert error.slug == slug and words in error.detail


def test_truncated_jpeg_is_refused(jpeg_paths):
    data = jpeg_paths[0].read_bytes()
    error = rejected(data[: len(data) // 2])
    assert error.slug == "invalid-image" and error.status == 422 and "truncated" in error.detail


def test_animated_gif_is_unsupported(jpeg_paths):
    gray = Image.fromarray(jpeg_gray(jpeg_paths[0]))
    data = encode(gray, "GIF", save_all=True, append_images=[gray.rotate(5)], duration=50, loop=0)
    assert rejected(data).slug == "unsupported-media-type"


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_multi_page_tiff_and_animated_png_are_refused(jpeg_paths, fmt):
    gray = Image.fromarray(jpeg_gray(jpeg_paths[0]))
    data = encode(gray, fmt, save_all=True, append_images=[gray.rotate(5)])
    error = rejected(data)
    assert error.status == 422 and "2 frames" in error.detail


def test_png_over_the_pixel_limit_is_refused_before_decoding():
    data = encode(Image.new("L", (2500, 2000)), "PNG")  # 5 Mpx of zeros: a few kB compressed
    error = rejected(data)
    assert (
        error.slug == "decompression-bomb"
        and error.status == 413
        and "KDOCT_MAX_IMAGE_PIXELS" in error.detail
    )


def test_png_bomb_header_is_refused_without_decoding():
    # A header claiming 100000 x 100000 pixels over a tiny IDAT: Pillow itself refuses it at open.
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + header
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + png_chunk(b"IEND", b"")
    )
    assert rejected(data, ImageLimits()).slug == "decompression-bomb"


def test_dicom_volume_over_the_frame_limit_is_refused(jpeg_paths):
    pixels = jpeg_gray(jpeg_paths[0])[:64, :64]
    error = rejected(make_dicom([pixels] * 17))
    assert error.slug == "decompression-bomb" and "KDOCT_MAX_FRAMES" in error.detail


def test_dicomdir_is_refused(jpeg_paths):
    data = make_dicom([jpeg_gray(jpeg_paths[0])[:32, :32]], sop_class="1.2.840.10008.1.3.10")
    assert rejected(data).slug == "unsupported-media-type"


def test_dicom_patient_tags_never_leave_the_decoder(jpeg_paths, caplog):
    caplog.set_level(logging.DEBUG)
    good = make_dicom([jpeg_gray(jpeg_paths[0])])
    upload = decode_upload(good, LIMITS)
    truncated = rejected(good[: len(good) - 5000])
    texts = [repr(upload), truncated.detail, caplog.text]
    assert not any(secret in text for text in texts for secret in (PATIENT_NAME, PATIENT_ID, "Doe"))
    assert "DICOM" in truncated.detail


def test_corrupt_bmp_header_is_refused():
    data = b"BM" + b"\xff" * 60
    assert rejected(data).status in (415, 422)


def test_rgb_png_with_alpha_is_accepted(jpeg_paths):
    with Image.open(jpeg_paths[0]) as image:
        rgba = image.convert("RGBA")
    assert decode_upload(encode(rgba, "PNG"), LIMITS).frames[0].mode == "RGBA"


@pytest.mark.parametrize("number_of_frames", ["-1", "5"])
def test_dicom_whose_frame_count_lies_is_refused(jpeg_paths, number_of_frames):
    import io

    import pydicom

    frames = [jpeg_gray(path) for path in jpeg_paths[:2]]
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(frames)))
    dataset.NumberOfFrames = number_of_frames
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageRejected) as info:
        decode_upload(buffer.getvalue(), ImageLimits())
    assert info.value.status == 422


def _deflated(dicom: bytes, *, nested_bytes: int = 0, undefined_lengths: bool = True) -> bytes:
    """`dicom` re-saved as Deflated Explicit VR Little Endian, optionally with a sequence whose item holds a
    private element of `nested_bytes` (sequence and item of undefined length, as scanners write them)."""
    import io

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = pydicom.dcmread(io.BytesIO(dicom))
    if nested_bytes:
        item = Dataset()
        item.add_new(0x00091010, "LO", "KDOCT")
        item.add_new(0x00091011, "OB", bytes(nested_bytes))
        dataset.ReferencedImageSequence = Sequence([item])
        dataset["ReferencedImageSequence"].is_undefined_length = undefined_lengths
        item.is_undefined_length_sequence_item = undefined_lengths
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_deflated_dicom_decodes_to_the_same_frames_as_native(sample_jpegs):
    frames = [jpeg_gray(path) for path in sample_jpegs["CNV"][:2]]
    native = make_dicom(frames)
    for deflated in (_deflated(native), _deflated(native, nested_bytes=1024, undefined_lengths=True)):
        assert len(deflated) < len(native) * 0.8  # it really is deflated (speckle compresses poorly)
        upload = decode_upload(deflated, LIMITS)
        assert upload.is_volume and len(upload.frames) == 2
        for image, frame in zip(upload.frames, frames, strict=True):
            assert np.array_equal(np.asarray(image), frame)


@pytest.mark.parametrize("undefined_lengths", [True, False])
def test_deflated_dicom_with_a_huge_element_inside_a_sequence_is_refused_before_inflating(undefined_lengths):
    frames = [np.zeros((32, 32), dtype=np.uint8)]
    problem = rejected(
        _deflated(make_dicom(frames), nested_bytes=5 << 20, undefined_lengths=undefined_lengths)
    )
    assert problem.status == 413
    # Undefined lengths are walked into, so the element itself is named; a sequence of defined length is
    # refused as a whole by its own declared length.
    named = "(0009,1011) declares 5242880 bytes" if undefined_lengths else "(0008,1140) declares"
    assert named in problem.detail, problem.detail


def test_truncated_or_corrupt_deflated_dicom_is_422():
    deflated = _deflated(make_dicom([np.full((32, 32), 7, dtype=np.uint8)]))
    assert rejected(deflated[: len(deflated) - 200]).status == 422
    corrupt = bytearray(deflated)
    corrupt[-100:-90] = b"\xff" * 10
    assert rejected(bytes(corrupt)).status == 422
