"""The app in process (TestClient runs the real lifespan, ONNX Runtime and batchers)."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from kdoct.bundle import load_bundle
from kdoct.errors import GoldenMismatchError
from kdoct.preprocess import preprocess_array
from kdoct.probabilities import softmax
from kdoct_testing.bundles import STUDENT_TEMPERATURE
from kdoct_testing.records import MemorySink
from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, encode, jpeg_gray, make_dicom
from service.app import create_app
from service.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from service.state import app_state


def post(client: TestClient, data: bytes, name: str = "scan.jpeg", **params):
    return client.post("/classify", files={"file": (name, data, "application/octet-stream")}, params=params)


def assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["type"] == PROBLEM_BASE + slug and body["status"] == status and body["detail"]
    return body


def test_classify_a_real_jpeg(client, jpeg_paths, bundles):
    from PIL import Image

    data = jpeg_paths[0].read_bytes()
    response = client.post("/classify", files={"file": ("x.jpeg", data)}, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "req-42" and response.headers["X-Request-ID"] == "req-42"
    assert set(body["probabilities"]) == {"normal", "drusen", "cnv"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(body["probabilities"][body["label"]])
    assert body["model"]["sha256"] == load_bundle(bundles["student"]).sha256
    assert body["frames"] is None and body["input"]["format"] == "jpeg"
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
    # Calibrated probabilities, computed independently with a plain ONNX Runtime session.
    bundle = load_bundle(bundles["student"])
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    with Image.open(jpeg_paths[0]) as image:
        batch = preprocess_array(image, bundle.preprocess)[None]
    expected = softmax(session.run(None, {"input": batch})[0], STUDENT_TEMPERATURE)[0]
    np.testing.assert_allclose([body["probabilities"][c] for c in bundle.class_names], expected, atol=1e-6)


def test_every_answer_is_recorded_before_it_is_sent(make_settings, jpeg_paths):
    sink = MemorySink()
    with TestClient(create_app(make_settings(second_opinion="never"), sink=sink)) as client:
        data = jpeg_paths[1].read_bytes()
        body = post(client, data).json()
        key = app_state(client.app).audit_key
    record = sink.get(body["prediction_id"])
    assert record is not None and record["input_sha256"] == body["input"]["sha256"]
    # The answer echoes the request id; the record keeps only its keyed hash.
    assert record["request_id"] == key.request_id_hash(body["request_id"]) != body["request_id"]
    assert record["probabilities"] == body["probabilities"]
    assert record["timing_ms"]["total"] > 0 and record["client_id"] is None


def test_second_opinion_always_answers_both_models(client, jpeg_paths):
    body = post(client, jpeg_paths[2].read_bytes(), second_opinion="always").json()
    opinion = body["second_opinion"]
    assert opinion["model"]["name"] == "test-teacher"
    assert abs(sum(opinion["probabilities"].values()) - 1) < 1e-6
    assert opinion["agrees"] == (opinion["label"] == body["label"])
    if not opinion["agrees"]:
        assert body["refer"]


def test_second_opinion_never_and_auto_above_threshold_skip_the_teacher(make_settings, jpeg_paths):
    with TestClient(create_app(make_settings(second_opinion_threshold=0.01))) as client:
        data = jpeg_paths[0].read_bytes()
        assert post(client, data, second_opinion="never").json()["second_opinion"] is None
        auto = post(client, data).json()
        assert auto["second_opinion"] is None and auto["refer"] is False


def test_second_opinion_always_without_teacher_is_a_clear_4xx(make_settings, jpeg_paths):
    with TestClient(create_app(make_settings(teacher_bundle=None))) as client:
        response = post(client, jpeg_paths[0].read_bytes(), second_opinion="always")
        assert "teacher" in assert_problem(response, 422, "second-opinion-unavailable")["detail"]
        assert post(client, jpeg_paths[0].read_bytes()).json()["second_opinion"] is None


def test_dicom_volume_gets_per_frame_results_and_no_patient_data(client, jpeg_paths, caplog):
    caplog.set_level(logging.DEBUG)
    frames = [jpeg_gray(path) for path in jpeg_paths[:4]]
    frames = [frame for frame in frames if frame.shape == frames[0].shape][:3]
    response = post(client, make_dicom(frames), name="volume.dcm", second_opinion="always")
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["frames"]) == len(frames) and body["volume_id"]
    assert [frame["frame_index"] for frame in body["frames"]] == list(range(len(frames)))
    for frame in body["frames"]:
        assert abs(sum(frame["probabilities"].values()) - 1) < 1e-6
        assert frame["second_opinion"]["model"]["name"] == "test-teacher"
    # Volume rule: the most severe class that tops any frame.
    severity = {"normal": 0, "drusen": 1, "cnv": 2}
    assert body["label"] == max((f["label"] for f in body["frames"]), key=severity.get)
    assert body["second_opinion"]["frames_reviewed"] == len(frames)
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe"):
        assert secret not in response.text and secret not in caplog.text


def test_single_frame_dicom_has_one_frame(client, jpeg_paths):
    body = post(client, make_dicom([jpeg_gray(jpeg_paths[0])])).json()
    assert len(body["frames"]) == 1 and body["volume_id"] is None


@pytest.mark.parametrize(
    ("make_data", "status", "slug"),
    [
        (lambda jpeg: b"", 422, "invalid-image"),
        (lambda jpeg: b"\x00garbage\xff" * 50, 415, "unsupported-media-type"),
        (lambda jpeg: jpeg[: len(jpeg) // 3], 422, "invalid-image"),
        (lambda jpeg: b"GIF89a" + b"\0" * 100, 415, "unsupported-media-type"),
    ],
    ids=["empty", "garbage", "truncated", "gif"],
)
def test_bad_uploads_are_problem_json_4xx(client, jpeg_paths, make_data, status, slug):
    assert_problem(post(client, make_data(jpeg_paths[0].read_bytes())), status, slug)


def test_multi_page_tiff_is_422(client, jpeg_paths):
    from PIL import Image

    page = Image.fromarray(jpeg_gray(jpeg_paths[0]))
    data = encode(page, "TIFF", save_all=True, append_images=[page])
    assert_problem(post(client, data, name="scan.tif"), 422, "invalid-image")


def test_oversized_upload_is_413_before_the_app_reads_it(make_settings, jpeg_paths):
    with TestClient(create_app(make_settings(max_upload_bytes=4096))) as client:
        assert_problem(post(client, jpeg_paths[0].read_bytes()), 413, "payload-too-large")


def test_missing_file_field_and_bad_policy_are_422(client):
    assert_problem(client.post("/classify", data={"other": "x"}), 422, "validation-error")
    response = client.post("/classify", files={"file": ("a", b"x")}, params={"second_opinion": "sometimes"})
    assert_problem(response, 422, "validation-error")


def test_unknown_route_is_problem_json(client):
    assert_problem(client.get("/nope"), 404, "not-found")


def test_health_and_models(client, bundles):
    assert client.get("/health/live").json() == {"status": "live", "records": None}
    # Readiness answers anyone: ready or not, never which models (no name, version or hash).
    ready = client.get("/health/ready")
    assert ready.json() == {"status": "ready", "records": "database"}
    student_sha256 = load_bundle(bundles["student"]).sha256
    assert student_sha256 not in ready.text
    models = client.get("/models").json()
    roles = {model["role"]: model for model in models["models"]}
    assert roles["student"]["sha256"] == student_sha256
    assert roles["student"]["calibration"] == {"temperature": STUDENT_TEMPERATURE}
    assert roles["student"]["runtime"]["name"] == "onnx" and roles["student"]["golden_max_difference"] <= 1e-4
    assert roles["teacher"]["class_names"] == ["normal", "drusen", "cnv"]


def test_readiness_is_503_when_the_sink_cannot_record(make_settings, jpeg_paths):
    sink = MemorySink()
    with TestClient(create_app(make_settings(), sink=sink)) as client:
        sink.accepting = False  # what the durable sink reports when neither database nor spool works
        assert_problem(client.get("/health/ready"), 503, "not-ready")
        assert client.get("/health/live").status_code == 200
        response = post(client, jpeg_paths[0].read_bytes())
        assert_problem(response, 503, "record-unavailable")


def test_metrics_expose_request_and_inference_series(client, jpeg_paths):
    post(client, jpeg_paths[0].read_bytes())
    post(client, b"")
    text = client.get("/metrics").text
    assert 'kdoct_request_duration_seconds_count{method="POST",route="/classify",status="200"}' in text
    assert 'kdoct_rejected_requests_total{reason="invalid_image"}' in text
    for name in ("kdoct_inference_duration_seconds", "kdoct_queue_wait_seconds", "kdoct_batch_size",
                 "kdoct_predictions_total", "kdoct_model_info", "kdoct_model_ready"):  # fmt: skip
        assert name in text


def test_queue_full_answers_503_with_retry_after(make_settings, jpeg_paths):
    release = threading.Event()
    with TestClient(
        create_app(make_settings(max_queue=1, max_batch_size=1, second_opinion="never"))
    ) as client:
        runtime = app_state(client.app).pipeline.classifier.student.batcher.runtime
        original = runtime.predict

        def blocked(batch):
            release.wait(30)
            return original(batch)

        runtime.predict = blocked
        data = jpeg_paths[0].read_bytes()
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(post, client, data) for _ in range(5)]
            # One request runs (blocked), two wait (max_queue 1 + the one decode thread's): the other
            # two are refused at once, while the runtime is still blocked (nothing can answer 200
            # before release).
            refused = []
            for future in as_completed(futures, timeout=30):
                refused.append(future.result())
                if len(refused) == 2:
                    break
            release.set()
            full = refused[0]
            assert [r.status_code for r in refused] == [503, 503]
            responses = [f.result() for f in futures]
    body = assert_problem(full, 503, "overloaded")
    assert full.headers["Retry-After"] == "1" and "full" in body["detail"]
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 503, 503]


def test_startup_refuses_a_bundle_whose_golden_outputs_do_not_match(make_settings, bundles, tmp_path):
    tampered = tmp_path / "student"
    shutil.copytree(bundles["student"], tampered)
    expected_path = tampered / "golden" / "expected.json"
    expected = json.loads(expected_path.read_text())
    expected["probabilities"] = [row[::-1] for row in expected["probabilities"]]
    expected_path.write_text(json.dumps(expected))
    manifest = json.loads((tampered / "bundle.json").read_text())
    from kdoct.bundle import sha256_file

    manifest["files"]["golden/expected.json"] = sha256_file(expected_path)
    (tampered / "bundle.json").write_text(json.dumps(manifest))
    app = create_app(make_settings(student_bundle=tampered))
    with pytest.raises(GoldenMismatchError, match="refusing to serve test-student"), TestClient(app):
        pass
    assert app_state(app).ready is False


def test_openapi_documents_every_endpoint_and_error(client):
    schema = client.get("/openapi.json").json()
    for path in ("/classify", "/models", "/health/live", "/health/ready", "/metrics"):
        assert path in schema["paths"]
    classify = schema["paths"]["/classify"]["post"]
    assert {"200", "413", "415", "422", "503"} <= set(classify["responses"])
    assert "multipart/form-data" in classify["requestBody"]["content"]


def test_feedback_bodies_are_capped_at_16_kib_before_they_are_read(client):
    url = f"/predictions/{uuid.uuid4()}/feedback"
    big = {"label": "cnv", "note": "x" * (20 << 10)}
    body = assert_problem(client.post(url, json=big), 413, "payload-too-large")
    assert "16384 bytes" in body["detail"]
    # Under the cap the route itself answers (no such prediction here).
    assert client.post(url, json={"label": "cnv", "note": "x" * 1000}).status_code == 404


def test_answers_are_never_cached_nor_sniffed(client, jpeg_paths):
    for response in (
        post(client, jpeg_paths[0].read_bytes()),
        client.get("/health/live"),
        client.get("/nope"),
    ):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_service_keeps_numpys_openblas_to_one_thread(make_settings):
    """OpenBLAS threads spin after each product and take the cores ONNX Runtime needs next
    (service/inference/runtime.py keep_blas_to_one_thread; measured in bench/answer_timing.py). The
    limit holds where the products run: the event loop's thread (the OOD scores of every request)."""
    from threadpoolctl import threadpool_info

    def openblas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["internal_api"] == "openblas"]

    with TestClient(create_app(make_settings())) as client:
        assert client.portal is not None
        in_the_loop = client.portal.call(openblas_threads)
    assert in_the_loop and set(in_the_loop) == {1}, in_the_loop
