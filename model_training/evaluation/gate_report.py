"""How well a final model's safety gate (kdoct/safety.py) tells what it may grade from what it may not,
measured on data no one tuned on:

- in distribution: the run's test patients (`final --test-fraction`), never trained on, never used
  for the temperature or the gate's threshold;
- near out of distribution: B-scans of a disease the model never saw (DME from a manifest), of
  patients the model neither trained on nor tuned on;
- far out of distribution: natural photographs (scikit-image's sample data), rendered text, noise,
  blank frames.

The bundle is run as the service runs it by default (its ONNX graph on ONNX Runtime, the gate's own
code), so the flag rates are those the service gives.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError, DataError
from kdoct.preprocess import preprocess_batch
from kdoct.safety import OOD_REASON, SafetyGate, load_gate
from model_training.data.final_split import read_final_split
from model_training.data.image_cache import open_image

__all__ = ["NATURAL_PHOTOGRAPHS", "gate_report", "non_oct_images", "report_markdown"]

log = logging.getLogger(__name__)

# scikit-image's bundled sample images (no download needed): photographs, micrographs, a fundus photo.
NATURAL_PHOTOGRAPHS = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
    "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip
_TEXT_LINES = (
    "OCT macula, right eye: 512 x 496, 6 mm scan",
    "Findings: no intraretinal fluid. Foveal contour preserved.",
    "Impression: normal retina. Follow-up in 12 months.",
)
_SIZE = (512, 496)  # width, height of most sample B-scans


def _natural_photographs() -> dict[str, Image.Image]:
    try:
        import skimage.data  # deferred: scikit-image is a dev extra, needed for these images only
    except ImportError:
        raise ConfigError("the gate report needs scikit-image (pip install -e '.[dev]')") from None
    images = {}
    for name in NATURAL_PHOTOGRAPHS:
        array = getattr(skimage.data, name)()
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
        images[name] = Image.fromarray(array)
    return images


def _rendered_text() -> dict[str, Image.Image]:
    images = {}
    for name, (background, ink) in {"dark_on_light": (255, 0), "light_on_dark": (0, 255)}.items():
        for scale in (1, 2):
            image = Image.new("L", _SIZE, background)
            draw = ImageDraw.Draw(image)
            for row in range(_SIZE[1] // (16 * scale)):
                line = _TEXT_LINES[row % len(_TEXT_LINES)]
                draw.text((8, 4 + row * 16 * scale), line, fill=ink, font_size=11 * scale)
            images[f"{name}_x{scale}"] = image
    screenshot = Image.new("RGB", _SIZE, (236, 240, 244))
    draw = ImageDraw.Draw(screenshot)
    draw.rectangle((0, 0, _SIZE[0], 40), fill=(30, 80, 160))
    for row, line in enumerate(_TEXT_LINES * 4):
        draw.text((12, 56 + row * 28), line, fill=(20, 20, 20), font_size=14)
    images["screenshot_rgb"] = screenshot
    return images


def _noise() -> dict[str, Image.Image]:
    images = {}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        width, height = _SIZE
        images[f"uniform_{seed}"] = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        gaussian = np.clip(rng.normal(60, 40, (height, width)), 0, 255).astype(np.uint8)
        images[f"gaussian_{seed}"] = Image.fromarray(gaussian)
    return images


def _blank() -> dict[str, Image.Image]:
    return {f"level_{level}": Image.new("L", _SIZE, level) for level in (0, 128, 255)}


def non_oct_images() -> dict[str, dict[str, Image.Image]]:
    """The far out-of-distribution sets by group: natural photographs, rendered text, noise, blank."""
    return {
        "natural_photographs": _natural_photographs(),
        "rendered_text": _rendered_text(),
        "noise": _noise(),
        "blank": _blank(),
    }


def read_manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """The rows (path, label, patient_id) of a manifest CSV, refused without those columns."""
    try:
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read {manifest}: {exc}") from None
    if rows and not {"path", "label", "patient_id"} <= set(rows[0]):
        raise DataError(f"{manifest}: expected the columns path, label, patient_id")
    return rows


class _Scorer:
    """The bundle as the service runs it by default: its ONNX graph on ONNX Runtime, and its gate."""

    def __init__(self, bundle_dir: Path, precision: str = "fp32") -> None:
        self.bundle = load_bundle(bundle_dir)
        gate = load_gate(self.bundle.path, self.bundle.manifest["files"], precision)
        graph = self.bundle.int8_onnx_path if precision == "int8" else self.bundle.onnx_path
        if gate is None or graph is None:
            raise ConfigError(
                f"{bundle_dir}: the bundle has no safety gate or no {precision} ONNX graph: re-export it"
            )
        self.gate: SafetyGate = gate
        self.precision = precision
        self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

    def judge(self, images: list[Image.Image], batch_size: int = 32) -> dict[str, Any]:
        logits, features = [], []
        for start in range(0, len(images), batch_size):
            batch = preprocess_batch(images[start : start + batch_size], self.bundle.preprocess)
            batch_logits, batch_features = self.session.run(["logits", "features"], {"input": batch})
            logits.append(batch_logits)
            features.append(batch_features)
        quality = [self.gate.quality_reason(image) for image in images]
        verdicts = self.gate.verdicts(quality, np.concatenate(features))
        return {
            "labels": np.concatenate(logits).argmax(axis=1),
            "scores": np.array([v.ood_score for v in verdicts]),
            "reasons": [v.reason for v in verdicts],
        }


def _group(judged: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    reasons = judged["reasons"]
    flagged = sum(reason is not None for reason in reasons)
    group = {
        "images": len(reasons),
        "flagged": flagged,
        "flag_rate": round(flagged / max(1, len(reasons)), 4),
        "by_reason": dict(sorted(Counter(r for r in reasons if r is not None).items())),
    }
    if names is not None:
        group["passed"] = [name for name, reason in zip(names, reasons, strict=True) if reason is None]
    return group


def gate_report(
    run_dir: Path, ood_manifest: Path, ood_label: str = "DME", precision: str = "fp32"
) -> dict[str, Any]:
    """The report of `run_dir` (a `final` run with a test slice) against `ood_manifest`'s `ood_label`
    images of unseen patients and the non-OCT sets; `precision` int8: its INT8 model and gate."""
    run_dir = Path(run_dir)
    split = read_final_split(run_dir / "split.csv")
    if not split["test"]:
        raise DataError(
            f"{run_dir}/split.csv has no test patients: train with `final --test-fraction 0.15` so that the "
            f"gate is measured on patients no one tuned on"
        )
    scorer = _Scorer(run_dir / "student", precision)
    class_names = scorer.bundle.class_names
    tuned_on = {s.patient_id for s in split["train"] + split["val"]}

    test_images = [open_image(s.path) for s in split["test"]]
    truth = np.array([class_names.index(s.label) for s in split["test"]])
    test = scorer.judge(test_images)
    gradable = np.array([reason is None for reason in test["reasons"]])

    rows = [r for r in read_manifest_rows(ood_manifest) if r["label"].upper() == ood_label.upper()]
    unseen = [r for r in rows if r["patient_id"] not in tuned_on]
    if not unseen:
        raise DataError(f"{ood_manifest}: no {ood_label} images of patients this model was not trained on")
    ood = scorer.judge([open_image(str(ood_manifest.parent / r["path"])) for r in unseen])
    labels = np.r_[np.zeros(len(test["scores"])), np.ones(len(ood["scores"]))]
    auroc = float(roc_auc_score(labels, np.r_[test["scores"], ood["scores"]]))

    far = {}
    for name, images in non_oct_images().items():
        far[name] = _group(scorer.judge(list(images.values())), list(images))

    accuracy_all = float((test["labels"] == truth).mean())
    accuracy_gradable = (
        float((test["labels"][gradable] == truth[gradable]).mean()) if gradable.any() else None
    )
    return {
        "run": str(run_dir),
        "bundle": {"name": scorer.bundle.name, "sha256": scorer.bundle.sha256},
        "precision": precision,
        "ood_threshold": scorer.gate.ood.threshold,
        "in_distribution_test": {
            **_group(test),
            "patients": len({s.patient_id for s in split["test"]}),
            "accuracy_all": round(accuracy_all, 4),
            "accuracy_gradable": None if accuracy_gradable is None else round(accuracy_gradable, 4),
            "accuracy_flagged": round(float((test["labels"][~gradable] == truth[~gradable]).mean()), 4)
            if (~gradable).any()
            else None,
        },
        "near_ood": {
            "label": ood_label,
            **_group(ood),
            "patients": len({r["patient_id"] for r in unseen}),
            "excluded_seen_patients": len(rows) - len(unseen),
            "auroc_ood_score_vs_test": round(auroc, 4),
            "flagged_out_of_distribution": sum(r == OOD_REASON for r in ood["reasons"]),
        },
        "far_ood": far,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def report_markdown(report: dict[str, Any], command: str) -> str:
    test, near = report["in_distribution_test"], report["near_ood"]
    lines = [
        f"Student `{report['bundle']['name']}` (bundle sha256 {report['bundle']['sha256'][:16]}…, "
        f"{report.get('precision', 'fp32')} model and gate), "
        f"out-of-distribution threshold {report['ood_threshold']:.4f}. Command: `{command}`",
        "",
        "| images | n | flagged (gradable: false) | by reason |",
        "|---|---|---|---|",
        f"| held-out test B-scans, 3 classes ({test['patients']} patients) | {test['images']} | "
        f"{test['flagged']} ({_percent(test['flag_rate'])}) | {_reasons(test['by_reason'])} |",
        f"| {near['label']} B-scans, unseen patients ({near['patients']}) | {near['images']} | "
        f"{near['flagged']} ({_percent(near['flag_rate'])}) | {_reasons(near['by_reason'])} |",
    ]
    for name, group in report["far_ood"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {group['images']} | {group['flagged']} "
            f"({_percent(group['flag_rate'])}) | {_reasons(group['by_reason'])} |"
        )
    lines += [
        "",
        f"- AUROC of the out-of-distribution score, {near['label']} against the held-out test B-scans: "
        f"**{near['auroc_ood_score_vs_test']:.3f}**.",
        f"- Accuracy on the held-out test B-scans: {_percent(test['accuracy_all'])} on all "
        f"{test['images']}, {_percent(test['accuracy_gradable'])} on the "
        f"{test['images'] - test['flagged']} the gate passes, {_percent(test['accuracy_flagged'])} on the "
        f"{test['flagged']} it flags.",
    ]
    passed = {name: group["passed"] for name, group in report["far_ood"].items() if group["passed"]}
    if passed:
        lines.append(f"- Non-OCT images the gate passed: {json.dumps(passed)}.")
    return "\n".join(lines) + "\n"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "-"
