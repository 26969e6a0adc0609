import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.bundle import SCHEMA_VERSION, load_bundle, save_bundle
from kdoct.errors import BundleError, GoldenMismatchError
from kdoct.golden import check_golden, golden_files
from kdoct.models import create_model
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.probabilities import softmax

SPEC = PreprocessSpec(input_size=(64, 64))


def _manifest(**overrides):
    manifest = {
        "name": "kdoct-test-student",
        "version": "0.0.1",
        "role": "student",
        "arch": "test_efficientnet",
        "class_names": ["normal", "drusen", "cnv"],
        "preprocess": SPEC.to_dict(),
        "calibration": {"temperature": 1.5},
    }
    manifest.update(overrides)
    return manifest


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("test_efficientnet", 3).eval()


@pytest.fixture(scope="module")
def golden_images(sample_jpegs):
    images = []
    for path in (sample_jpegs["CNV"][0], sample_jpegs["NORMAL"][0]):
        with Image.open(path) as image:
            images.append(image.resize((128, 124)))
    return images


@pytest.fixture
def bundle_dir(tmp_path, model, golden_images):
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess_batch(golden_images, SPEC))).numpy()
    save_bundle(
        tmp_path / "bundle", model, _manifest(), extra_files=golden_files(golden_images, softmax(logits))
    )
    return tmp_path / "bundle"


def test_round_trip_restores_weights_and_manifest(bundle_dir, model):
    bundle = load_bundle(bundle_dir)
    assert bundle.name == "kdoct-test-student" and bundle.role == "student"
    assert bundle.class_names == ("normal", "drusen", "cnv")
    assert bundle.preprocess == SPEC and bundle.temperature == 1.5
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert set(manifest["files"]) == {"model.safetensors", "golden/expected.json", "golden/input_0.png",
                                      "golden/input_1.png"}  # fmt: skip
    for key, value in model.state_dict().items():
        assert torch.equal(bundle.model().state_dict()[key], value), key


def test_golden_check_passes_with_the_model_and_fails_with_another(bundle_dir):
    bundle = load_bundle(bundle_dir)
    model = bundle.model()

    def predict(batch):
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    assert check_golden(bundle.golden_dir, bundle.preprocess, predict) < 1e-5
    other = create_model("test_efficientnet", 3).eval()
    with pytest.raises(GoldenMismatchError, match="do not serve it"):
        check_golden(
            bundle.golden_dir, bundle.preprocess, lambda b: other(torch.from_numpy(b)).detach().numpy()
        )


def _rewrite_manifest(bundle_dir, change):
    path = bundle_dir / "bundle.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_flipped_byte_in_weights_is_named(bundle_dir):
    weights = bundle_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors: sha256 mismatch"):
        load_bundle(bundle_dir)


def test_missing_listed_file_is_named(bundle_dir):
    (bundle_dir / "golden" / "input_1.png").unlink()
    with pytest.raises(BundleError, match=r"input_1\.png is listed in bundle\.json but missing"):
        load_bundle(bundle_dir)


def test_unlisted_file_is_refused(bundle_dir):
    (bundle_dir / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match=r"notes\.txt is not listed"):
        load_bundle(bundle_dir)


def test_missing_manifest_is_named(bundle_dir):
    (bundle_dir / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        load_bundle(bundle_dir)


def test_corrupt_manifest_is_named(bundle_dir):
    (bundle_dir / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"bundle\.json is not valid JSON"):
        load_bundle(bundle_dir)


def test_future_schema_version_is_refused(bundle_dir):
    _rewrite_manifest(bundle_dir, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match="schema_version 2 is not supported"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("arch"), "'arch' is missing"),
        (lambda m: m.update(role="oracle"), "role must be one of"),
        (lambda m: m.update(class_names=["cnv", "cnv"]), "class_names must be"),
        (lambda m: m.update(preprocess={"input_size": 64, "interpolation": "nearest"}), "invalid preprocess"),
    ],
)
def test_invalid_manifest_fields_are_named(bundle_dir, change, message):
    _rewrite_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_weights_of_another_architecture_are_refused(tmp_path, model):
    save_bundle(tmp_path / "b", model, _manifest())
    _rewrite_manifest(tmp_path / "b", lambda m: m.update(arch="test_convnext"))
    with pytest.raises(BundleError, match="weights do not load into test_convnext"):
        load_bundle(tmp_path / "b").model()


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "absent")


def test_copy_of_a_bundle_verifies_and_keeps_its_sha(bundle_dir, tmp_path):
    shutil.copytree(bundle_dir, tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").sha256 == load_bundle(bundle_dir).sha256
    assert np.isclose(load_bundle(tmp_path / "copy").temperature, 1.5)
