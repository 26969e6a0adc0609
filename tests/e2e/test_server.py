"""End to end: a real uvicorn server answers real B-scans and OCT DICOM over HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, jpeg_gray, make_dicom
from service.problems import PROBLEM_MEDIA_TYPE


@pytest.fixture(scope="module")
def jpegs(sample_jpegs) -> list:
    return [path for paths in sample_jpegs.values() for path in paths[:16]]


def classify(url: str, data: bytes, **params) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={"file": ("upload", data)}, params=params, timeout=30)


def test_real_jpegs_get_probabilities_for_every_class_summing_to_one(server, jpegs):
    for path in jpegs[::16]:
        response = classify(server["url"], path.read_bytes())
        assert response.status_code == 200, response.text
        probabilities = response.json()["probabilities"]
        assert set(probabilities) == {"normal", "drusen", "cnv"}
        assert abs(sum(probabilities.values()) - 1.0) <= 1e-6


def test_a_prediction_is_readable_right_after_its_answer(server, jpegs):
    """Answers go out once their record is fsync'd to the journal, the insert follows (the default
    KDOCT_RECORD_ACK=spool); a read that follows an answer waits for it, so it never misses."""
    for path in jpegs[:24]:
        answer = classify(server["url"], path.read_bytes())
        assert answer.status_code == 200, answer.text
        prediction_id = answer.json()["prediction_id"]
        read = httpx.get(f"{server['url']}/predictions/{prediction_id}", timeout=30)
        assert read.status_code == 200, read.text
        assert read.json()["id"] == prediction_id
        assert read.json()["input_sha256"] == answer.json()["input"]["sha256"]


def test_dicom_single_and_multi_frame_get_per_frame_results(server, jpegs):
    frames = [jpeg_gray(path) for path in jpegs[:8]]
    frames = [frame for frame in frames if frame.shape == frames[0].shape][:4]
    single = classify(server["url"], make_dicom(frames[:1]))
    volume = classify(server["url"], make_dicom(frames), second_opinion="always")
    assert single.status_code == 200 and volume.status_code == 200, volume.text
    assert len(single.json()["frames"]) == 1
    body = volume.json()
    assert len(body["frames"]) == len(frames) > 1
    assert body["second_opinion"]["frames_reviewed"] == len(frames)
    for frame in body["frames"]:
        assert abs(sum(frame["probabilities"].values()) - 1.0) <= 1e-6
        assert frame["second_opinion"]["agrees"] == (frame["second_opinion"]["label"] == frame["label"])
    log = server["log"].read_text()
    for secret in (PATIENT_NAME, PATIENT_ID):
        assert secret not in volume.text and secret not in log


def test_64_concurrent_requests_equal_one_by_one_and_are_batched(server, jpegs):
    uploads = [path.read_bytes() for path in jpegs[:64]]
    one_by_one = [classify(server["url"], data).json()["probabilities"] for data in uploads]

    async def burst():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server["url"], timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/classify", files={"file": ("u", d)}) for d in uploads)
            )

    responses = asyncio.run(burst())
    assert all(response.status_code == 200 for response in responses)
    for response, expected in zip(responses, one_by_one, strict=True):
        for name, value in response.json()["probabilities"].items():
            assert value == pytest.approx(expected[name], abs=1e-5)
    metrics = httpx.get(f"{server['url']}/metrics").text
    batch_lines = [
        line for line in metrics.splitlines() if line.startswith('kdoct_batch_size_bucket{le="1.0"')
    ]
    count_lines = [line for line in metrics.splitlines() if line.startswith("kdoct_batch_size_count")]
    # Fewer runtime calls of size 1 than calls in all: some batches held several requests.
    assert float(batch_lines[0].split()[-1]) < float(count_lines[0].split()[-1])


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 422),
        (b"\x13\x37 not an image " * 64, 415),
        (b"GIF89a" + b"\x00" * 64, 415),
    ],
    ids=["empty", "garbage", "gif"],
)
def test_bad_uploads_are_4xx_problem_json(server, data, status):
    response = classify(server["url"], data)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE


def test_truncated_and_oversized_uploads_are_4xx(server, jpegs):
    data = jpegs[0].read_bytes()
    assert classify(server["url"], data[: len(data) // 2]).status_code == 422
    oversized = classify(server["url"], data * (3 * (2 << 20) // len(data)))
    assert oversized.status_code == 413
    assert oversized.json()["type"].endswith("/payload-too-large")


def test_health_models_and_openapi(server):
    assert httpx.get(f"{server['url']}/health/live").status_code == 200
    models = httpx.get(f"{server['url']}/models").json()["models"]
    assert {model["role"] for model in models} == {"student", "teacher"}
    assert httpx.get(f"{server['url']}/openapi.json").json()["info"]["title"].startswith("kdoct")


def test_the_safety_gate_refuses_what_is_not_a_b_scan_over_http(server, sample_jpegs):
    """A running server answers 200 with gradable: false, its reason and refer: true for a blank frame,
    noise, a natural photograph and rendered text; real held-out B-scans are gradable; the outcomes are
    counted in /metrics."""
    import io

    import numpy as np
    import skimage.data
    from PIL import Image, ImageDraw

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    text = Image.new("L", (512, 496), 255)
    for row in range(30):
        ImageDraw.Draw(text).text((8, 4 + 16 * row), "Impression: normal macula. Follow-up.", fill=0)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (496, 512), dtype=np.uint8))
    refused = {
        "blank": png(Image.new("L", (512, 496), 0)),
        "noise": png(noise),
        "photograph": png(Image.fromarray(skimage.data.coffee())),
        "text": png(text),
    }
    for name, data in refused.items():
        response = classify(server["url"], data)
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert body["gradable"] is False and body["refer"] is True, (name, body["reason"])
        assert body["reason"].startswith("quality:") or body["reason"] == "out_of_distribution"
    held_out = [path for c in ("CNV", "DRUSEN", "NORMAL") for path in sample_jpegs[c][50:60]]
    gradable = [classify(server["url"], path.read_bytes()).json()["gradable"] for path in held_out]
    assert np.mean(gradable) >= 0.8
    metrics = httpx.get(f"{server['url']}/metrics", timeout=10).text
    assert 'kdoct_safety_gate_total{model="test-student",outcome="quality:blank"}' in metrics
