"""`export --int8`: the INT8 student of a tiny gated bundle, its accuracy gate (kept and refused), the
bundle's pins of model.int8.onnx and its own golden outputs."""

import shutil

import pytest

from kdoct.bundle import INT8_ONNX_NAME, MANIFEST_NAME, load_bundle
from kdoct.errors import BundleError, GoldenMismatchError
from kdoct.golden import INT8_EXPECTED_NAME, INT8_SCORE_TOLERANCE, INT8_TOLERANCE, check_golden
from kdoct.safety import INT8_GATE_FILES, INT8_GATE_JSON, load_gate
from kdoct_testing.bundles import CLASSES, build_test_bundle, gate_images, gray_images
from model_training.cli import main
from service.inference.onnx_runtime import OnnxRuntime

_DIRS = {"normal": "NORMAL", "drusen": "DRUSEN", "cnv": "CNV"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_dir, sample_jpegs):
    """DIR/student (a tiny gated bundle, as a `final` run leaves it) and DIR/split.csv: the images the
    gate was fitted on are the training role, the next ones the validation role."""
    root = tmp_path_factory.mktemp("int8-run")
    golden = gray_images([sample_jpegs["CNV"][0], sample_jpegs["NORMAL"][0]])
    build_test_bundle(
        root / "student",
        "test_efficientnet",
        (64, 64),
        "student",
        golden,
        seed=3,
        gate=gate_images(sample_dir),
    )
    rows = ["path,label,patient_id,role"]
    for label, folder in _DIRS.items():
        paths = sorted((sample_dir / folder).glob("*.jpeg"))[:36]
        rows += [f"{p},{label},{p.stem},{'train' if i < 24 else 'val'}" for i, p in enumerate(paths)]
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def _copy(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _unchanged(bundle_dir, manifest_before):
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == manifest_before
    assert not (bundle_dir / INT8_ONNX_NAME).exists()
    assert not (bundle_dir / "golden" / INT8_EXPECTED_NAME).exists()
    load_bundle(bundle_dir)


def test_export_int8_from_bundle_pins_the_int8_model_and_its_own_golden_outputs(run_dir, tmp_path, capsys):
    run = _copy(run_dir, tmp_path)
    assert main(["export", "--from-bundle", str(run / "student"), "--int8"]) == 0
    bundle = load_bundle(run / "student")
    files = bundle.manifest["files"]
    assert {
        INT8_ONNX_NAME, "model.onnx", f"golden/{INT8_EXPECTED_NAME}", "golden/expected.json", *INT8_GATE_FILES
    } <= set(files)  # fmt: skip
    figures = bundle.manifest["int8"]
    assert figures["validation_images"] == 36 and figures["calibration_images"] == 72
    assert figures["label_agreement"] >= 0.99 and figures["own_safety_gate"] is True
    assert set(figures["ood_flag_rate"]) == {"fp32", "int8"} and 0 <= figures["ood_verdict_agreement"] <= 1
    assert figures["source"]["split"] == "split.csv" and figures["source"]["fold"] is None
    assert "INT8 against fp32" in capsys.readouterr().out
    # The INT8 model's gate: the fp32 quality bounds, out-of-distribution statistics of its own features
    # (same share of the validation images kept).
    fp32_gate, gate = load_gate(bundle.path, files), load_gate(bundle.path, files, "int8")
    assert gate.quality.to_json() == fp32_gate.quality.to_json() and gate.summary["precision"] == "int8"
    assert gate.ood.threshold != fp32_gate.ood.threshold
    assert gate.summary["ood"]["keep"] == fp32_gate.summary["ood"]["keep"]
    # The INT8 graph keeps the features output and reproduces its own golden outputs and gate scores,
    # not the fp32 ones it was derived from.
    runtime = OnnxRuntime(bundle.int8_onnx_path, threads=1, precision="int8")
    assert runtime.has_features
    with pytest.raises(GoldenMismatchError):  # its scores are not those of the fp32 statistics
        check_golden(
            bundle.golden_dir, bundle.preprocess, runtime.predict, INT8_TOLERANCE, gate=fp32_gate,
            score_tolerance=INT8_SCORE_TOLERANCE, expected_name=INT8_EXPECTED_NAME,
        )  # fmt: skip
    check_golden(
        bundle.golden_dir, bundle.preprocess, runtime.predict, INT8_TOLERANCE, gate=gate,
        score_tolerance=INT8_SCORE_TOLERANCE, expected_name=INT8_EXPECTED_NAME,
    )  # fmt: skip
    with pytest.raises(GoldenMismatchError):
        check_golden(bundle.golden_dir, bundle.preprocess, runtime.predict, gate=gate)
    # A second INT8 model is refused: pinned files are replaced only by re-exporting.
    with pytest.raises(BundleError, match="already has"):
        from model_training.export.int8 import add_int8

        add_int8(bundle.path, calibration_images=[object()], val_images=[object()], val_labels=[0])


def test_a_tampered_int8_model_is_refused(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    assert main(["export", "--from-bundle", str(run / "student"), "--int8"]) == 0
    with open(run / "student" / INT8_ONNX_NAME, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="model.int8.onnx: sha256 mismatch"):
        load_bundle(run / "student")


def test_the_int8_gate_files_are_pinned_and_go_together(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path)
    assert main(["export", "--from-bundle", str(run / "student"), "--int8"]) == 0
    bundle = load_bundle(run / "student")
    half = {name: digest for name, digest in bundle.manifest["files"].items() if name != INT8_GATE_JSON}
    with pytest.raises(BundleError, match="needs both"):
        load_gate(bundle.path, half, "int8")
    with open(run / "student" / INT8_GATE_JSON, "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="gate.int8.json: sha256 mismatch"):
        load_bundle(run / "student")


def test_int8_is_refused_and_nothing_written_when_it_misses_the_limits(run_dir, tmp_path, capsys):
    from model_training.export.int8 import Int8Gate, add_int8
    from model_training.export.int8_data import int8_images

    run = _copy(run_dir, tmp_path)
    bundle_dir = run / "student"
    before = (bundle_dir / MANIFEST_NAME).read_bytes()
    bundle = load_bundle(bundle_dir)
    images = int8_images(bundle.manifest["provenance"], bundle.class_names, run / "split.csv")
    # Without the training images' labels the INT8 model keeps the fp32 gate, whose verdicts it must
    # leave unchanged: a limit no model can meet (more than every image) refuses it. (How many verdicts
    # the tiny model's INT8 features flip depends on the CPU's quantized kernels: 0 on some hosts.)
    with pytest.raises(BundleError, match="safety gate's OOD verdict"):
        add_int8(
            bundle_dir, calibration_images=images.calibration, val_images=images.val,
            val_labels=images.val_labels,
            limits=Int8Gate(min_agreement=0.0, max_accuracy_drop=1.0, min_gate_agreement=1.01),
        )  # fmt: skip
    _unchanged(bundle_dir, before)
    # The accuracy rule: a limit no INT8 model can meet (it must gain a point) refuses it too.
    with pytest.raises(BundleError, match="points of accuracy"):
        add_int8(
            bundle_dir, calibration_images=images.calibration[:8], val_images=images.val,
            val_labels=images.val_labels, limits=Int8Gate(max_accuracy_drop=-0.01, min_gate_agreement=0.0),
        )  # fmt: skip
    _unchanged(bundle_dir, before)
    # A split that is not the one the bundle records is refused before anything is quantized.
    with pytest.raises(BundleError, match="not the split"):
        int8_images({"fold": None, "folds_fingerprint": "0" * 64}, CLASSES, run / "split.csv")
