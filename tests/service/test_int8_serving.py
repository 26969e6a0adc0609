"""KDOCT_PRECISION=int8: the student's model.int8.onnx on ONNX Runtime CPU, golden-checked on its own
outputs; refused on PyTorch or CUDA and for a bundle without one."""

import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError
from kdoct.preprocess import preprocess_batch
from kdoct.probabilities import softmax
from kdoct_testing.bundles import CLASSES
from model_training.export.int8 import Int8Gate, add_int8
from model_training.export.int8_data import int8_images
from service.app import create_app
from service.inference.onnx_runtime import OnnxRuntime


@pytest.fixture(scope="module")
def int8_student(bundles, tmp_path_factory, sample_dir):
    """The tiny test student with an INT8 model, calibrated and judged on the gate's own images."""
    root = tmp_path_factory.mktemp("int8-student")
    shutil.copytree(bundles["student"], root / "student")
    rows = ["path,label,patient_id,role"]
    for label, folder in {"normal": "NORMAL", "drusen": "DRUSEN", "cnv": "CNV"}.items():
        paths = sorted((sample_dir / folder).glob("*.jpeg"))[:36]
        rows += [f"{p},{label},{p.stem},{'train' if i < 24 else 'val'}" for i, p in enumerate(paths)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    # This random student's logits are near-ties, so INT8 changes labels (the export's gate refuses it,
    # tests/model_training/export/test_int8_export.py); serving is what is tested here, so the limits are off.
    # With the training labels it gets its own out-of-distribution statistics: its golden gate scores
    # are reproduced only if the service scores INT8 features with them, not with the fp32 ones.
    images = int8_images({}, CLASSES, root / "split.csv")
    add_int8(
        root / "student", calibration_images=images.calibration, val_images=images.val,
        val_labels=images.val_labels, calibration_labels=images.calibration_labels,
        limits=Int8Gate(0.0, 1.0, 0.0, 1.0),
    )  # fmt: skip
    return root / "student"


def test_the_service_serves_the_int8_student(make_settings, int8_student, jpeg_paths):
    settings = make_settings(student_bundle=int8_student, precision="int8")
    with TestClient(create_app(settings)) as client:
        runtimes = {m["role"]: m["runtime"] for m in client.get("/models").json()["models"]}
        assert runtimes["student"]["precision"] == "int8" and runtimes["student"]["name"] == "onnx"
        assert runtimes["teacher"]["precision"] == "fp32"  # the second opinion stays fp32
        with open(jpeg_paths[0], "rb") as handle:
            answer = client.post("/classify", files={"file": ("scan.jpeg", handle, "image/jpeg")})
        assert answer.status_code == 200, answer.text
    # Calibrated with the INT8 model's own temperature (fitted on its logits at export), not fp32's.
    bundle = load_bundle(int8_student)
    assert bundle.int8_temperature == bundle.manifest["int8"]["temperature"] != bundle.temperature
    with Image.open(jpeg_paths[0]) as image:
        batch = preprocess_batch([image.convert("L")], bundle.preprocess)
    logits = OnnxRuntime(bundle.int8_onnx_path, threads=1, precision="int8").predict_logits(batch)
    expected = softmax(logits, bundle.int8_temperature)[0]
    served = answer.json()["probabilities"]
    assert [served[name] for name in bundle.class_names] == pytest.approx(expected.tolist(), abs=1e-4)


def test_int8_is_refused_on_pytorch_and_cuda_and_without_an_int8_model(make_settings, bundles):
    with pytest.raises(ConfigError, match="KDOCT_PRECISION=int8"):
        make_settings(precision="int8", runtime="torch")
    with pytest.raises(ConfigError, match="KDOCT_PRECISION=int8"):
        make_settings(precision="int8", device="cuda", runtime="onnx")
    settings = make_settings(precision="int8")
    assert settings.resolved_runtime == "onnx" and settings.resolved_device == "cpu"
    with pytest.raises(ConfigError, match="no model.int8.onnx"), TestClient(create_app(settings)):
        pass
