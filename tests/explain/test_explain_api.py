"""explain=true through the real app (real bundles, real JPEGs and DICOM), and the page served at `/`."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from kdoct_testing.records import MemorySink
from kdoct_testing.uploads import jpeg_gray, make_dicom
from service.app import create_app
from service.config import load_settings

FEATURE_STRIDE = 32


@pytest.fixture(scope="module")
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture(scope="module")
def client(explain_bundles, sink, tmp_path_factory) -> Iterator[TestClient]:
    workdir = tmp_path_factory.mktemp("explain-app")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # no developer .env, and any local database file lands here
        settings = load_settings(
            student_bundle=explain_bundles["test_efficientnet"].path,
            teacher_bundle=explain_bundles["test_convnext"].path,
            second_opinion="auto",
            decode_threads=1,
            auth="disabled",
        )
        with TestClient(create_app(settings, sink=sink)) as test_client:
            yield test_client


def _png(explanation: dict) -> Image.Image:
    png = base64.b64decode(explanation["overlay_png_base64"])
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _classify(client: TestClient, path: Path, **query) -> dict:
    response = client.post(
        "/classify", params=query, files={"file": (path.name, path.read_bytes(), "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_explain_true_adds_the_heatmap_of_the_label(client, explain_bundles, sample_jpegs) -> None:
    path = sample_jpegs["CNV"][1]
    answer = _classify(client, path, explain="true")
    explanation = answer["explanation"]
    assert explanation["method"] == "grad-cam"
    assert explanation["class_name"] == answer["label"]
    assert explanation["target_layer"] == "conv_head"
    assert explanation["frame_index"] is None
    heatmap = np.asarray(explanation["map"])
    size = explain_bundles["test_efficientnet"].preprocess.input_size
    assert heatmap.shape == tuple(explanation["map_shape"]) == tuple(s // FEATURE_STRIDE for s in size)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    with Image.open(path) as scan:
        assert _png(explanation).size == scan.size
    assert explanation["compute_ms"] > 0


def test_without_explain_there_is_no_heatmap(client, sample_jpegs) -> None:
    answer = _classify(client, sample_jpegs["NORMAL"][0])
    assert answer.get("explanation") is None


def test_teacher_is_explained_when_it_ran_and_records_hold_no_heatmap(client, sink, sample_jpegs) -> None:
    answer = _classify(client, sample_jpegs["DRUSEN"][0], explain="true", second_opinion="always")
    opinion = answer["second_opinion"]
    assert opinion["explanation"]["class_name"] == opinion["label"]
    assert opinion["explanation"]["target_layer"] == "stages.3"
    assert _png(opinion["explanation"]).mode == "RGB"
    record = sink.get(answer["prediction_id"])
    assert record is not None and record["second_opinion"] is not None
    assert "explanation" not in record["second_opinion"], "heatmaps are never stored"


def test_volume_is_explained_on_the_frame_that_decided_it(client, sample_jpegs) -> None:
    frames = [
        jpeg_gray(path)
        for path in (sample_jpegs["NORMAL"][0], sample_jpegs["CNV"][0], sample_jpegs["DME"][0])
    ]
    dicom = make_dicom(frames)
    response = client.post(
        "/classify?explain=true", files={"file": ("volume.dcm", dicom, "application/dicom")}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    explanation = answer["explanation"]
    strongest = max(answer["frames"], key=lambda frame: frame["probabilities"][answer["label"]])
    assert explanation["frame_index"] == strongest["frame_index"]
    assert explanation["class_name"] == answer["label"]
    assert _png(explanation).size == (frames[0].shape[1], frames[0].shape[0])


def test_openapi_documents_explain(client) -> None:
    schema = client.get("/openapi.json").json()
    parameters = {p["name"] for p in schema["paths"]["/classify"]["post"]["parameters"]}
    assert "explain" in parameters
    assert "Explanation" in schema["components"]["schemas"]
    assert "/" not in schema["paths"], "the page is not part of the API"


def test_page_is_served_at_root(client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert '<script src="static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/missing.js").status_code == 404
