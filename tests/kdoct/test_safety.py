"""The safety gate's two checks on real B-scans and on what is not one, its files in a bundle, and its
golden check."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.bundle import load_bundle
from kdoct.errors import BundleError, GoldenMismatchError
from kdoct.golden import check_golden, gate_probes
from kdoct.models import LogitsAndFeatures, create_model
from kdoct.preprocess import PreprocessSpec
from kdoct.safety import GATE_JSON, OOD_ARRAYS, OodDetector, load_gate, quality_features
from kdoct_testing.bundles import build_test_bundle, gate_images, gray_images
from model_training.export.safety_fit import fit_ood, fit_quality_bounds

SPEC = PreprocessSpec(input_size=(64, 64))


def _open(path):
    with Image.open(path) as image:
        image.load()
        return image


@pytest.fixture(scope="module")
def real_scans(sample_jpegs):
    """Three-class B-scans: every other one fits the bounds, the rest are held out."""
    paths = [p for c in ("CNV", "DRUSEN", "NORMAL") for p in sample_jpegs[c][:60]]
    images = [_open(p) for p in paths]
    return images[0::2], images[1::2]


@pytest.fixture(scope="module")
def bounds(real_scans):
    fitting, _ = real_scans
    return fit_quality_bounds(np.stack([quality_features(image) for image in fitting]))


def _reason(bounds, image):
    return bounds.reason(quality_features(image))


def test_quality_passes_held_out_b_scans_and_names_what_is_wrong_with_the_rest(bounds, real_scans):
    import skimage.data

    _, held_out = real_scans
    passed = [_reason(bounds, image) is None for image in held_out]
    assert np.mean(passed) >= 0.95, [_reason(bounds, image) for image in held_out]
    rng = np.random.default_rng(0)
    assert _reason(bounds, Image.new("L", (512, 496), 0)) == "blank"
    assert _reason(bounds, Image.new("L", (512, 496), 255)) == "blank"
    assert _reason(bounds, Image.fromarray(rng.integers(0, 256, (496, 512), dtype=np.uint8))) == "noise"
    assert _reason(bounds, Image.fromarray(skimage.data.astronaut())) == "colour"
    assert _reason(bounds, Image.fromarray(skimage.data.camera())) is not None
    # A real B-scan saved as RGB is still gray: JPEG chroma noise is within the colour bound.
    assert _reason(bounds, held_out[0].convert("RGB")) is None


def test_quality_features_do_not_change_the_frame_and_read_16_bit_scans(real_scans):
    _, held_out = real_scans
    image = held_out[0]
    before = np.asarray(image).copy()
    features = quality_features(image)
    assert np.array_equal(np.asarray(image), before) and image.size == (before.shape[1], before.shape[0])
    deep = Image.fromarray((np.asarray(image, dtype=np.uint16) * 257).astype(np.uint16))
    assert deep.mode == "I;16"
    np.testing.assert_allclose(quality_features(deep), features, atol=0.02)


def _clusters(rng, centres, n):
    labels = np.repeat(np.arange(len(centres)), n)
    return centres[labels] + 0.3 * rng.standard_normal((len(labels), centres.shape[1])), labels


def test_ood_score_keeps_the_chosen_share_and_flags_what_is_far():
    rng = np.random.default_rng(1)
    centres = 3 * rng.standard_normal((3, 16)) + 10
    train, labels = _clusters(rng, centres, 200)
    val, _ = _clusters(rng, centres, 100)
    test, _ = _clusters(rng, centres, 100)
    detector, info = fit_ood(train, labels, 3, val, keep=0.95)
    assert np.mean(detector.scores(val) <= detector.threshold) == pytest.approx(0.95, abs=0.01)
    assert np.mean(detector.scores(test) <= detector.threshold) > 0.85
    far = rng.standard_normal((50, 16)) * 3 - 10
    assert np.all(detector.scores(far) > detector.threshold)
    # Unit length first: the score does not depend on the features' scale.
    np.testing.assert_allclose(detector.scores(test * 7.5), detector.scores(test), rtol=1e-4)
    assert info["fitted_on_images"] == 600 and info["threshold_on_images"] == 300
    with pytest.raises(ValueError, match="expects"):
        detector.scores(test[:, :8])


def test_ood_fit_refuses_a_class_without_images():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="classes"):
        fit_ood(rng.standard_normal((20, 4)), np.zeros(20, int), 3, rng.standard_normal((5, 4)), 0.95)


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory, sample_dir, sample_jpegs):
    out = tmp_path_factory.mktemp("gated") / "student"
    golden = gray_images([sample_jpegs["CNV"][0], sample_jpegs["NORMAL"][0]])
    build_test_bundle(
        out, "test_efficientnet", (64, 64), "student", golden, seed=3, gate=gate_images(sample_dir)
    )
    return out


def _predict(bundle):
    model = LogitsAndFeatures(bundle.model()).eval()

    def predict(batch):
        with torch.inference_mode():
            logits, features = model(torch.from_numpy(batch))
        return logits.numpy(), features.numpy()

    return predict


def test_a_gated_bundle_pins_its_gate_and_refuses_the_probes(gated_bundle):
    bundle = load_bundle(gated_bundle)
    assert {GATE_JSON, OOD_ARRAYS} <= set(bundle.manifest["files"])
    gate = load_gate(bundle.path, bundle.manifest["files"])
    assert gate.ood.dims == 256 and gate.ood.threshold > 0
    expected = json.loads((gated_bundle / "golden" / "expected.json").read_text())
    probes = expected["gate"][-len(gate_probes()) :]
    assert [probe["reason"] for probe in probes] == ["quality:blank", "quality:noise"]
    assert check_golden(bundle.golden_dir, bundle.preprocess, _predict(bundle), gate=gate) < 1e-4


@pytest.mark.parametrize("name", [GATE_JSON, OOD_ARRAYS])
def test_a_missing_or_altered_gate_file_is_refused(gated_bundle, tmp_path, name):
    missing = tmp_path / "missing"
    shutil.copytree(gated_bundle, missing)
    (missing / name).unlink()
    with pytest.raises(BundleError, match="listed in bundle.json but missing"):
        load_bundle(missing)
    altered = tmp_path / "altered"
    shutil.copytree(gated_bundle, altered)
    content = bytearray((altered / name).read_bytes())
    content[len(content) // 2] ^= 0x01
    (altered / name).write_bytes(bytes(content))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(altered)


def test_a_gate_with_one_file_or_a_foreign_format_is_refused(gated_bundle):
    bundle = load_bundle(gated_bundle)
    files = dict(bundle.manifest["files"])
    del files[OOD_ARRAYS]
    with pytest.raises(BundleError, match="needs both"):
        load_gate(bundle.path, files)
    assert load_gate(bundle.path, {"model.safetensors": "x"}) is None


def test_the_golden_check_catches_a_runtime_whose_features_differ(gated_bundle):
    bundle = load_bundle(gated_bundle)
    gate = load_gate(bundle.path, bundle.manifest["files"])
    honest = _predict(bundle)

    def shifted(batch):
        logits, features = honest(batch)
        return logits, features + 0.05 * np.abs(features).max()

    with pytest.raises(GoldenMismatchError, match="out-of-distribution score"):
        check_golden(bundle.golden_dir, bundle.preprocess, shifted, gate=gate)
    with pytest.raises(GoldenMismatchError, match="no penultimate features"):
        check_golden(bundle.golden_dir, bundle.preprocess, lambda batch: honest(batch)[0], gate=gate)


def test_the_golden_check_catches_altered_quality_bounds(gated_bundle):
    bundle = load_bundle(gated_bundle)
    gate = load_gate(bundle.path, bundle.manifest["files"])
    lenient = type(gate.quality)(low=gate.quality.low - 1e6, high=gate.quality.high + 1e6)
    altered = type(gate)(quality=lenient, ood=gate.ood, summary=gate.summary)
    with pytest.raises(GoldenMismatchError, match="quality check says None"):
        check_golden(bundle.golden_dir, bundle.preprocess, _predict(bundle), gate=altered)


def test_the_detector_round_trips_through_the_bundle_files(gated_bundle):
    bundle = load_bundle(gated_bundle)
    gate = load_gate(bundle.path, bundle.manifest["files"])
    files = gate.files()
    assert set(files) == {GATE_JSON, OOD_ARRAYS}
    document = json.loads(files[GATE_JSON])
    assert document["ood"]["threshold"] == gate.ood.threshold
    assert isinstance(gate.ood, OodDetector) and gate.ood.class_means.shape == (3, 256)


def test_an_untrained_model_still_gives_features_for_every_architecture():
    for arch in ("test_efficientnet", "test_convnext"):
        model = create_model(arch, 3).eval()
        logits, features = LogitsAndFeatures(model)(torch.zeros(2, 3, 64, 64))
        assert logits.shape == (2, 3) and features.shape[0] == 2
        torch.testing.assert_close(logits, model(torch.zeros(2, 3, 64, 64)))
