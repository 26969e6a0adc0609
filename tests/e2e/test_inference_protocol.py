"""End to end, the Open Inference Protocol v2: the real tritonclient.http client against a real uvicorn
server. Images (BYTES) and preprocessed tensors (FP32), as JSON and as binary data, get the same
calibrated probabilities as POST /classify, each image on record; bad requests are 400, an unknown
model 404, in the protocol's {"error": ...} shape."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from kdoct.bundle import load_bundle
from service.imaging import ImageLimits, decode_upload
from service.intake import preprocess_frames

MODEL = "test-student"  # kdoct_testing.bundles names the tiny student so
OUTPUTS = ("probabilities", "label", "prediction_id", "refer", "gradable")


@pytest.fixture(scope="module")
def client(server):
    url = server["url"].removeprefix("http://")
    with triton.InferenceServerClient(url, network_timeout=60.0) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def scans(sample_jpegs) -> list[bytes]:
    return [sample_jpegs[c][k].read_bytes() for c in ("CNV", "DRUSEN", "NORMAL") for k in (0, 1)]


@pytest.fixture(scope="module")
def tensors(e2e_bundles, scans) -> np.ndarray:
    """The scans preprocessed exactly as the service preprocesses them for the student."""
    spec = load_bundle(e2e_bundles["student"]).preprocess
    return np.concatenate([preprocess_frames(decode_upload(d, ImageLimits()).frames, spec) for d in scans])


def classified(server, data: bytes) -> dict:
    response = httpx.post(f"{server['url']}/classify", files={"file": ("scan", data)}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def record(server, prediction_id: str) -> dict:
    response = httpx.get(f"{server['url']}/predictions/{prediction_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def infer(client, name: str, value: np.ndarray, datatype: str, binary: bool, outputs=OUTPUTS):
    given = triton.InferInput(name, list(value.shape), datatype)
    given.set_data_from_numpy(value, binary_data=binary)
    requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs] if outputs else None
    return client.infer(MODEL, [given], outputs=requested, request_id="oip-1")


def test_server_and_model_metadata_and_readiness(client, e2e_bundles):
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "kdoct" and "binary_tensor_data" in server["extensions"]
    version = load_bundle(e2e_bundles["student"]).version
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == [version]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata["inputs"]} == {
        ("input", "FP32", (-1, 3, 64, 64)),
        ("image", "BYTES", (-1,)),
    }
    assert {t["name"]: t["datatype"] for t in metadata["outputs"]} == {
        "probabilities": "FP32",
        "label": "BYTES",
        "prediction_id": "BYTES",
        "refer": "BOOL",
        "gradable": "BOOL",
    }
    assert client.get_model_metadata(MODEL, model_version=version)["name"] == MODEL
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version=version)


def test_unknown_model_or_version_is_404_in_the_protocol_shape(client, server, tensors):
    assert not client.is_model_ready("no-such-model")
    for call, message in (
        (lambda: client.get_model_metadata("no-such-model"), "unknown model 'no-such-model'"),
        (lambda: client.get_model_metadata(MODEL, model_version="0.0.0-none"), "no version '0.0.0-none'"),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "404" and message in raised.value.message()
    given = triton.InferInput("input", [1, 3, 64, 64], "FP32")
    given.set_data_from_numpy(tensors[:1])
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no-such-model", [given])
    assert raised.value.status() == "404" and "unknown model" in raised.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_images_get_the_probabilities_of_classify_and_are_on_record(client, server, scans, binary):
    # As JSON, a BYTES element is the base64 of the file (image files are not text).
    elements = [base64.b64encode(d) for d in scans] if not binary else scans
    result = infer(client, "image", np.array(elements, dtype=np.object_), "BYTES", binary)
    probabilities = result.as_numpy("probabilities")
    labels, ids = result.as_numpy("label"), result.as_numpy("prediction_id")
    assert probabilities.shape == (len(scans), 3) and probabilities.dtype == np.float32
    assert result.get_response()["parameters"]["safety_gate"] == "quality+ood"
    assert result.get_response()["id"] == "oip-1"
    class_names = result.get_output("probabilities")["parameters"]["class_names"].split(",")
    for index, data in enumerate(scans):
        expected = classified(server, data)
        assert probabilities[index] == pytest.approx(
            [expected["probabilities"][c] for c in class_names], abs=1e-5
        )
        assert _text(labels[index]) == expected["label"]
        assert bool(result.as_numpy("gradable")[index]) == expected["gradable"]
        assert bool(result.as_numpy("refer")[index]) == expected["refer"]
        stored = record(server, _text(ids[index]))
        assert stored["format"] == "jpeg" and stored["input_sha256"] == hashlib.sha256(data).hexdigest()
        assert stored["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-9)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tensors_skip_decoding_and_get_the_probabilities_of_classify(client, server, scans, tensors, binary):
    result = infer(client, "input", tensors, "FP32", binary)
    probabilities = result.as_numpy("probabilities")
    # A tensor has no pixels for the quality check: only the out-of-distribution score judged it.
    assert result.get_response()["parameters"]["safety_gate"] == "ood_only"
    class_names = result.get_output("probabilities")["parameters"]["class_names"].split(",")
    for index, data in enumerate(scans):
        expected = classified(server, data)
        assert probabilities[index] == pytest.approx(
            [expected["probabilities"][c] for c in class_names], abs=1e-5
        )
        stored = record(server, _text(result.as_numpy("prediction_id")[index]))
        assert stored["format"] == "tensor" and (stored["width"], stored["height"]) == (64, 64)
        assert stored["input_sha256"] == hashlib.sha256(tensors[index].astype("<f4").tobytes()).hexdigest()


def test_without_requested_outputs_every_output_comes_back_binary(client, tensors):
    result = infer(client, "input", tensors[:2], "FP32", True, outputs=None)
    for name in OUTPUTS:
        assert result.as_numpy(name).shape[0] == 2
        assert "binary_data_size" in result.get_output(name)["parameters"]


def test_only_the_requested_outputs_come_back(client, tensors):
    result = infer(client, "input", tensors[:1], "FP32", False, outputs=("label",))
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("name", "value", "datatype", "status", "message"),
    [
        ("input", np.zeros((1, 3, 32, 32), np.float32), "FP32", "400", "shape"),
        ("input", np.zeros((1, 3, 64, 64), np.int32), "INT32", "400", "datatype"),
        ("image", np.zeros((1, 3, 64, 64), np.float32), "FP32", "400", "must be BYTES"),
        # An upload refused as /classify refuses it, with its status (415), naming the element.
        ("image", np.array([b"\x13\x37 not an image" * 8], dtype=np.object_), "BYTES", "415", "element 0"),
        ("pixels", np.zeros((1, 3, 64, 64), np.float32), "FP32", "400", "unknown input"),
    ],
    ids=["bad-shape", "bad-datatype", "tensor-as-image", "undecodable", "unknown-input"],
)
def test_bad_inputs_are_4xx_with_a_clear_message(client, name, value, datatype, status, message):
    given = triton.InferInput(name, list(value.shape), datatype)
    given.set_data_from_numpy(value)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [given])
    assert raised.value.status() == status
    assert message in raised.value.message()


def _post(server, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server['url']}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=30)


def test_malformed_bodies_are_400_never_500(server, tensors):
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64]}]}
    header["inputs"][0]["parameters"] = {"binary_data_size": tensors[0].nbytes}
    text = json.dumps(header).encode()
    cases = {
        "not json": (b"{inputs: oops", None),
        "json not an object": (b"[1, 2]", None),
        "binary without the header length": (text + tensors[0].tobytes(), None),
        "binary part too short": (
            text + tensors[0].tobytes()[:-4],
            {"Inference-Header-Content-Length": str(len(text))},
        ),
        "binary part too long": (
            text + tensors[0].tobytes() + b"xx",
            {"Inference-Header-Content-Length": str(len(text))},
        ),
        "header length past the body": (text, {"Inference-Header-Content-Length": str(len(text) + 1)}),
        "header length not a number": (text, {"Inference-Header-Content-Length": "twelve"}),
        "data count and shape differ": (
            json.dumps(
                {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [1.0]}]}
            ).encode(),
            None,
        ),
        "non-finite values": (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 3, 64, 64],
                            "data": [float("nan")] * 12288,
                        }
                    ]
                }
            ).encode(),
            None,
        ),
    }
    for case, (body, headers) in cases.items():
        response = _post(server, body, headers)
        assert response.status_code == 400, (case, response.text)
        assert response.headers["content-type"] == "application/json", case
        assert response.json()["error"], case


def test_infer_is_counted_in_the_request_metrics(client, server, tensors):
    infer(client, "input", tensors[:1], "FP32", True)
    metrics = httpx.get(f"{server['url']}/metrics", timeout=10).text
    assert 'route="/v2/models/{name}/infer"' in metrics
    assert "kdoct_predictions_total{" in metrics


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
