"""Fuzzing: the decoder (service/imaging.py) in-process with hypothesis, and every endpoint of the
OpenAPI schema with schemathesis against the real server. A short run in `make test`;
`python -m bench --only fuzz` runs the long one (KDOCT_FUZZ_EXAMPLES)."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections import Counter

import numpy as np
import schemathesis
from corpus import deflated_dicom, dicom_bytes, jpeg_dicom  # noqa: I001 - the corpus is a sibling module, not a package
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kdoct.preprocess import PreprocessSpec, preprocess_array
from service.imaging import DecodedUpload, ImageLimits, ImageRejected, decode_upload

EXAMPLES = int(os.environ.get("KDOCT_FUZZ_EXAMPLES", "150"))
API_EXAMPLES = int(os.environ.get("KDOCT_FUZZ_API_EXAMPLES", "25"))
LIMITS = ImageLimits(max_image_pixels=4_000_000, max_frames=16, max_volume_pixels=16_000_000)


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every accepted format: the fuzzer mutates these."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 255, (24, 32), dtype=np.uint8)
    image = Image.fromarray(gray)
    seeds = {}
    for fmt, options in (("JPEG", {}), ("PNG", {}), ("TIFF", {"compression": "tiff_deflate"}), ("BMP", {})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        seeds[fmt.lower()] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buffer, format="PNG")
    seeds["png16"] = buffer.getvalue()
    seeds["dicom"] = dicom_bytes(np.stack([gray, gray]))
    # Mutations of these reach the bounded inflater and the encapsulated-frame checks.
    seeds["dicom-deflated"] = deflated_dicom(np.stack([gray, gray]))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="JPEG")
    seeds["dicom-jpeg"] = jpeg_dicom([buffer.getvalue()] * 2, number_of_frames=2)
    return seeds


SEEDS = _seed_files()


@st.composite
def mutated_uploads(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif len(data) > 8:
            del data[position : position + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


FUZZ_SPEC = PreprocessSpec(input_size=(32, 32))


def _decode_as_the_server_does(data: bytes) -> DecodedUpload:
    # The server lets ordinary library warnings through to its log; only bombs are errors there.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        return decode_upload(data, LIMITS)


def _assert_decodes_or_rejects(data: bytes) -> None:
    try:
        upload = _decode_as_the_server_does(data)
    except ImageRejected as rejected:
        assert 400 <= rejected.status < 500 and rejected.detail
        return
    assert upload.frames and upload.width >= 1 and upload.height >= 1
    for frame in upload.frames:  # decoded pixels must be usable, not a lazily broken image
        assert frame.size[0] * frame.size[1] <= LIMITS.max_image_pixels
        # ...and what the server does next with them must work too (an error here would be a 500).
        assert preprocess_array(frame, FUZZ_SPEC).shape == (3, *FUZZ_SPEC.input_size)


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_uploads())
def test_decoder_rejects_mutated_files_cleanly(data: bytes) -> None:
    _assert_decodes_or_rejects(data)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(
    st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", bytes(128) + b"DICM"]
    ),
    st.binary(max_size=512),
)
def test_decoder_rejects_garbage_behind_magic_bytes(magic: bytes, tail: bytes) -> None:
    _assert_decodes_or_rejects(magic + tail)


def test_api_never_answers_5xx(hostile_server, artifacts_dir) -> None:
    """Every operation of the served OpenAPI schema, with schemathesis-generated requests."""
    api = schemathesis.openapi.from_url(f"{hostile_server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert any(operation.path == "/classify" for operation in operations)
    failures, statuses = [], Counter()
    for operation in operations:

        @settings(
            max_examples=API_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case) -> None:
            response = case.call(timeout=60)
            statuses[str(response.status_code)] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        call()
    report = {"operations": len(operations), "requests": sum(statuses.values()), "statuses": dict(statuses)}
    (artifacts_dir / "hostile-schemathesis.json").write_text(json.dumps(report, indent=2))
    assert report["requests"] >= len(operations), "schemathesis sent (almost) nothing"
    assert not failures, "\n".join(failures[:10])
