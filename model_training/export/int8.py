"""The INT8 student: ONNX Runtime static quantization of a bundle's model.onnx, kept only when it agrees
with the fp32 model.

QDQ format (what ONNX Runtime fuses into integer kernels on CPU), unsigned 8-bit activations and signed
8-bit weights, one scale per output channel for the weights (per-tensor weights cost EfficientNet's
depthwise convolutions most of their accuracy). Activation ranges are calibrated (min/max) on the
training images of the bundle's own split, through the bundle's preprocess spec. Full-range weights,
not `reduce_range`: on the default student 7-bit weights changed 5 % of the validation labels, 8-bit
ones none (docs/BENCHMARKS.md).

The quantized graph keeps both outputs, logits and the penultimate `features` the safety gate scores.
Its logits are not the fp32 model's either, so it gets its own temperature, fitted on its own logits so
that its probabilities reproduce the fp32 model's calibrated ones (the fp32 temperature carries the
calibration: fitted on held-back or cross-validated images; see `fit_int8_temperature`); the service
applies it with the INT8 model (bundle.json "int8" "temperature").
It is refused (BundleError, the bundle untouched) unless, on the validation images, it gives the fp32
model's label for at least `min_agreement` of them, loses at most `max_accuracy_drop` of accuracy, and
it still refuses the gate's probes. Its features are not the fp32 model's, so (given the training
images' labels) the gate's out-of-distribution statistics are fitted again on them, as for fp32; without
the labels it must keep the fp32 gate's verdicts (`min_gate_agreement`). Its golden outputs are
recorded in golden/expected.int8.json, its figures in bundle.json "int8".
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from kdoct.bundle import INT8_ONNX_NAME, Bundle, add_to_bundle, load_bundle
from kdoct.errors import BundleError
from kdoct.golden import INT8_EXPECTED_NAME, gate_probes, golden_expected, read_golden
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.probabilities import softmax
from kdoct.safety import INT8_GATE_JSON, INT8_OOD_ARRAYS, SafetyGate, load_gate, ood_files

__all__ = ["Int8Gate", "add_int8", "fit_int8_temperature", "quantize_onnx"]

log = logging.getLogger(__name__)

BATCH = 16  # images per calibration / evaluation batch: bounds memory, not results


@dataclass(frozen=True)
class Int8Gate:
    """What the INT8 model must meet on the validation images (issue 17: >= 99 % same labels, <= 0.5
    point of accuracy lost), and the share of validation images whose safety-gate OOD verdict the INT8
    features leave unchanged (the OOD threshold sits at the 95th percentile of these very images, so
    scores near it flip first)."""

    min_agreement: float = 0.99
    max_accuracy_drop: float = 0.005
    min_gate_agreement: float = 0.99
    # Issue 27: the INT8 model's served probabilities within 0.05 of fp32's (95th percentile over the
    # images and classes: one image near a decision boundary may differ more, and is reported).
    max_probability_diff_p95: float = 0.05


# log T searched on a grid: one dimension, no optimiser to misbehave, and this module stays free of torch.
_LOG_T_GRID = np.linspace(np.log(0.02), np.log(20.0), 1201)


def fit_int8_temperature(fp32_probabilities: np.ndarray, int8_logits: np.ndarray) -> float:
    """The temperature at which softmax(int8_logits / T) is closest to the fp32 model's calibrated
    probabilities (least cross-entropy, i.e. KL): the INT8 model inherits fp32's calibration instead of
    being calibrated again on labels (a model trained on every patient has none held out)."""
    target = np.asarray(fp32_probabilities, dtype=np.float64)
    logits = np.asarray(int8_logits, dtype=np.float64)
    losses = []
    for log_t in _LOG_T_GRID:
        scaled = logits / np.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        losses.append(-(target * log_p).sum(axis=1).mean())
    return float(np.exp(_LOG_T_GRID[int(np.argmin(losses))]))


def _batches(images: Sequence[Image.Image], spec: PreprocessSpec) -> Iterator[np.ndarray]:
    for start in range(0, len(images), BATCH):
        yield preprocess_batch(images[start : start + BATCH], spec)


def quantize_onnx(
    fp32_path: Path, out_path: Path, calibration_images: Sequence[Image.Image], spec: PreprocessSpec
) -> None:
    """Write the statically quantized (QDQ, per-channel) `fp32_path` to `out_path`."""

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = _batches(calibration_images, spec)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory() as scratch:
        # ORT's recommended pre-processing: shapes inferred and BatchNorm folded into the convolutions,
        # so each convolution gets one set of quantized weights.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def _outputs(
    path: Path, images: Sequence[Image.Image], spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = [session.run(["logits", "features"], {"input": batch}) for batch in _batches(images, spec)]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def _figures(
    bundle: Bundle,
    int8_path: Path,
    images: Sequence[Image.Image],
    labels: np.ndarray,
    gate: SafetyGate | None,
    int8_gate: SafetyGate | None,
) -> dict[str, Any]:
    """INT8 against fp32 on the validation images (the INT8 features scored by `int8_gate`)."""
    spec = bundle.preprocess
    fp32_logits, fp32_features = _outputs(bundle.onnx_path, images, spec)
    int8_logits, int8_features = _outputs(int8_path, images, spec)
    fp32_labels, int8_labels = fp32_logits.argmax(1), int8_logits.argmax(1)
    # Served probabilities are calibrated: each model at its own temperature.
    fp32_probabilities = softmax(fp32_logits, bundle.temperature)
    temperature = fit_int8_temperature(fp32_probabilities, int8_logits)
    dp = np.abs(fp32_probabilities - softmax(int8_logits, temperature))
    at_fp32_temperature = np.abs(fp32_probabilities - softmax(int8_logits, bundle.temperature))
    figures: dict[str, Any] = {
        "validation_images": len(labels),
        "temperature": temperature,
        "temperature_fitted_on": "INT8 logits, to the fp32 model's calibrated probabilities",
        "label_agreement": float((fp32_labels == int8_labels).mean()),
        "accuracy_fp32": float((fp32_labels == labels).mean()),
        "accuracy_int8": float((int8_labels == labels).mean()),
        "max_abs_diff_probabilities": float(dp.max()),
        "p95_abs_diff_probabilities": float(np.quantile(dp, 0.95)),
        "mean_abs_diff_probabilities": float(dp.mean()),
        "max_abs_diff_probabilities_at_fp32_temperature": float(at_fp32_temperature.max()),
    }
    if gate is not None and int8_gate is not None:
        fp32_scores, int8_scores = gate.ood.scores(fp32_features), int8_gate.ood.scores(int8_features)
        same = (fp32_scores > gate.ood.threshold) == (int8_scores > int8_gate.ood.threshold)
        figures["ood_verdict_agreement"] = float(same.mean())
        figures["max_abs_diff_ood_score"] = float(np.abs(fp32_scores - int8_scores).max())
        figures["ood_flag_rate"] = {
            "fp32": float((fp32_scores > gate.ood.threshold).mean()),
            "int8": float((int8_scores > int8_gate.ood.threshold).mean()),
        }
    return figures


def _refusal(figures: dict[str, Any], limits: Int8Gate, own_gate: bool) -> str | None:
    drop = figures["accuracy_fp32"] - figures["accuracy_int8"]
    if figures["label_agreement"] < limits.min_agreement:
        return f"it gives the fp32 label for {figures['label_agreement']:.1%} (< {limits.min_agreement:.1%})"
    if drop > limits.max_accuracy_drop + 1e-12:
        return f"it loses {100 * drop:.2f} points of accuracy (> {100 * limits.max_accuracy_drop:.2f})"
    agreement = figures.get("ood_verdict_agreement", 1.0)
    if not own_gate and agreement < limits.min_gate_agreement:
        return f"its features change the safety gate's OOD verdict on {1 - agreement:.1%} of images"
    if figures["p95_abs_diff_probabilities"] > limits.max_probability_diff_p95:
        return (
            f"its probabilities differ from fp32's by {figures['p95_abs_diff_probabilities']:.3f} at the "
            f"95th percentile (> {limits.max_probability_diff_p95})"
        )
    return None


def _golden(bundle: Bundle, int8_path: Path, gate: SafetyGate | None) -> bytes:
    """golden/expected.int8.json: the INT8 graph's own outputs (and gate verdicts) on the golden inputs."""
    golden = read_golden(bundle.golden_dir)
    logits, features = _outputs(int8_path, golden.images, bundle.preprocess)
    verdicts = None
    if gate is not None:
        verdicts = gate.verdicts([gate.quality_reason(image) for image in golden.images], features)
        first_probe = len(golden.images) - len(gate_probes())
        if any(v.gradable for v in verdicts[first_probe:]):
            raise BundleError(
                f"{bundle.path}: the INT8 model's features let the safety gate grade a black frame or noise: "
                f"model.int8.onnx was not written"
            )
    return golden_expected(len(golden.images), softmax(logits), verdicts)


def _own_gate(
    bundle: Bundle,
    int8_path: Path,
    gate: SafetyGate,
    train_images: Sequence[Image.Image],
    train_labels: Sequence[int],
    val_images: Sequence[Image.Image],
) -> SafetyGate:
    """The gate with out-of-distribution statistics fitted on the INT8 model's own features, as
    model_training/export/safety_fit.py fits the fp32 ones (same images, same share kept)."""
    # deferred: safety_fit brings torch and sklearn; quantizing and checking an INT8 model need neither
    # (bench/int8 measures ONNX Runtime in a process without torch)
    from model_training.export.safety_fit import fit_ood, fit_ood_from_ratio

    _, train_features = _outputs(int8_path, train_images, bundle.preprocess)
    _, val_features = _outputs(int8_path, val_images, bundle.preprocess)
    keep = float(gate.summary["ood"]["keep"])
    labels, classes = np.asarray(train_labels), len(bundle.class_names)
    if "threshold_ratio" in gate.summary["ood"]:
        # Calibrated by cross-validation (no held-back images): the same ratio, at the INT8 model's scale.
        ood, info, _ = fit_ood_from_ratio(train_features, labels, classes, gate.summary["ood"])
    else:
        ood, info = fit_ood(train_features, labels, classes, val_features, keep)
    val_quality = [gate.quality_reason(image) for image in val_images]
    flagged = sum(
        v.reason is not None for v in SafetyGate(gate.quality, ood, {}).verdicts(val_quality, val_features)
    )
    summary = {
        "ood": info,
        "validation": {
            "images": len(val_images),
            "flagged_total": flagged,
            "flag_rate": round(flagged / len(val_images), 4),
        },
    }
    return SafetyGate(quality=gate.quality, ood=ood, summary=summary)


def add_int8(
    bundle_dir: str | Path,
    *,
    calibration_images: Sequence[Image.Image],
    val_images: Sequence[Image.Image],
    val_labels: Sequence[int],
    calibration_labels: Sequence[int] | None = None,
    limits: Int8Gate = Int8Gate(),
    source: dict[str, Any] | None = None,
) -> Bundle:
    """Quantize the bundle's model.onnx, check it against fp32 on the validation images and, when it
    passes, add model.int8.onnx and golden/expected.int8.json to the bundle (bundle.json re-pinned,
    figures under "int8"). `source`: where the images came from, recorded with the figures.

    With `calibration_labels` (the classes of the calibration = training images) and a gated bundle,
    the INT8 model gets its own out-of-distribution statistics (kdoct/safety.py INT8_GATE_FILES),
    fitted on its own features; its verdicts then stand on their own, and their agreement with the
    fp32 gate's is reported, not required. Without them it must keep the fp32 gate's verdicts."""
    bundle = load_bundle(bundle_dir)
    if bundle.onnx_path is None or bundle.golden_dir is None:
        raise BundleError(f"{bundle.path}: INT8 needs the bundle's model.onnx and golden/: re-export it")
    if bundle.int8_onnx_path is not None:
        raise BundleError(f"{bundle.path} already has {INT8_ONNX_NAME}")
    if not calibration_images:
        raise BundleError("INT8 needs calibration (training) images")
    checked_on = "validation images"
    if not val_images:
        # A model trained on every patient has no held-out image: INT8 is checked for fidelity to fp32 on
        # the training images (the recipe's held-out figures are cross-validation's).
        if calibration_labels is None:
            raise BundleError("INT8 needs validation images, or the calibration images' labels")
        val_images, val_labels, checked_on = calibration_images, calibration_labels, "training images"
    gate = load_gate(bundle.path, bundle.manifest["files"])
    own_gate = gate is not None and calibration_labels is not None
    with tempfile.TemporaryDirectory() as scratch:
        int8_path = Path(scratch) / INT8_ONNX_NAME
        quantize_onnx(bundle.onnx_path, int8_path, calibration_images, bundle.preprocess)
        int8_gate = gate
        if own_gate:
            assert gate is not None and calibration_labels is not None
            int8_gate = _own_gate(bundle, int8_path, gate, calibration_images, calibration_labels, val_images)
        figures = _figures(bundle, int8_path, val_images, np.asarray(val_labels), gate, int8_gate)
        figures.update(
            checked_on=checked_on,
            calibration_images=len(calibration_images),
            limits=dataclasses.asdict(limits),
            own_safety_gate=own_gate,
            **({"source": source} if source else {}),
        )
        log.info("INT8 against fp32 on the validation images: %s", figures)
        why = _refusal(figures, limits, own_gate)
        if why is not None:
            raise BundleError(
                f"{bundle.path}: the INT8 model is refused, nothing was written: on {len(val_images)} "
                f"{checked_on} {why}"
            )
        files = {
            INT8_ONNX_NAME: int8_path.read_bytes(),
            f"golden/{INT8_EXPECTED_NAME}": _golden(bundle, int8_path, int8_gate),
        }
        if own_gate:
            assert int8_gate is not None
            files.update(ood_files(int8_gate.ood, int8_gate.summary, INT8_GATE_JSON, INT8_OOD_ARRAYS))
    return add_to_bundle(bundle.path, files, {"int8": figures})
