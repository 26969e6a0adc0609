"""The clinical safety gate: an image is graded only when it looks like the B-scans the model learned
from, on two independent checks.

1. Image quality, before inference, on the decoded pixels: eight cheap measurements of a
   low-resolution gray copy (`quality_features`), each compared with bounds fitted on the training
   images (`QualityBounds`). A value outside its bounds names what is wrong (`quality:<what>`).
2. Out-of-distribution, after inference, on the model's own penultimate features scaled to unit
   length: the squared Mahalanobis distance to the nearest class mean under one shared covariance
   (fitted on the training images, shrunk towards the identity), divided by the number of feature
   dimensions; the threshold keeps a fixed share (95 %) of the validation images (`OodDetector`).
   Unit length first, because the features' norm varies more between in-distribution images than
   their direction does (Mueller & Hein, "Mahalanobis++", 2025); on the sample it took the AUROC for
   DME B-scans from 0.78 to 0.91 (docs/RESULTS.md).

Both live in the bundle as `safety/gate.json` and `safety/ood.safetensors`, pinned by bundle.json
like every file, produced by model_training (model_training/export/safety_fit.py) and re-checked by the
golden check. Training and the service compute the same numbers from the same functions here.

An INT8 model computes other features, so it gets out-of-distribution statistics of its own, fitted
on its own features of the same training and validation images (`safety/gate.int8.json`,
`safety/ood.int8.safetensors`, model_training/export/int8.py); the quality bounds are the image's, shared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save

from kdoct.errors import BundleError
from kdoct.preprocess import to_gray

__all__ = [
    "GATE_FILES",
    "GATE_FORMAT",
    "GATE_JSON",
    "INT8_GATE_FILES",
    "INT8_GATE_JSON",
    "INT8_OOD_ARRAYS",
    "OOD_ARRAYS",
    "OOD_REASON",
    "QUALITY_FEATURES",
    "QUALITY_REASONS",
    "GateVerdict",
    "OodDetector",
    "QualityBounds",
    "SafetyGate",
    "load_gate",
    "ood_files",
    "quality_features",
]

GATE_FORMAT = "kdoct-safety-gate-1"
GATE_JSON = "safety/gate.json"
OOD_ARRAYS = "safety/ood.safetensors"
GATE_FILES = (GATE_JSON, OOD_ARRAYS)
INT8_GATE_JSON = "safety/gate.int8.json"
INT8_OOD_ARRAYS = "safety/ood.int8.safetensors"
INT8_GATE_FILES = (INT8_GATE_JSON, INT8_OOD_ARRAYS)
OOD_REASON = "out_of_distribution"

# The measurements, in the order of the feature vector. All on a gray copy scaled to [0, 1], reduced by
# the integer factor that brings its long side to at most _SIDE pixels (box-averaged: speckle averages
# out, layers and edges stay; an integer reduction costs a quarter of a resampling).
QUALITY_FEATURES = (
    "mean",  # average brightness
    "std",  # contrast
    "saturated",  # share of pixels at the top of the range
    "dark",  # share of near-black pixels: a B-scan is mostly dark vitreous and choroid
    "aspect",  # width / height of the image as sent
    "chroma",  # colour: a B-scan is gray; a fundus photograph or a screenshot is not
    "anisotropy",  # mean |vertical gradient| / mean |horizontal gradient|: retinal layers run across
    "roughness",  # mean |gradient| / std: pixel noise is rough, tissue is smooth at this scale
)
_SIDE = 128
_SATURATED = 0.98
_DARK = 0.1
# Blank is a definition, not a fitted bound: less than one 8-bit gray level of variation.
BLANK_STD = 1.0 / 255.0

# What a value below (first) or above (second) its bound means; None: that side is not checked.
_REASON_OF: dict[str, tuple[str | None, str | None]] = {
    "mean": ("low_signal", "overexposed"),
    "std": ("low_contrast", "not_oct_like"),
    "saturated": (None, "saturated"),
    "dark": ("not_oct_like", "low_signal"),
    "aspect": ("geometry", "geometry"),
    "chroma": (None, "colour"),
    "anisotropy": ("not_oct_like", "not_oct_like"),
    "roughness": ("not_oct_like", "noise"),
}
# When several measurements are out of bounds, the reason given is the first of these.
QUALITY_REASONS = (
    "blank",
    "noise",  # before brightness: uniform noise is also "too bright" for a B-scan, but noise says more
    "colour",
    "saturated",
    "low_signal",
    "overexposed",
    "low_contrast",
    "geometry",
    "not_oct_like",
)


def quality_features(image: Image.Image) -> np.ndarray:
    """The QUALITY_FEATURES of one decoded image (any mode kdoct.preprocess accepts), float64 (8,)."""
    width, height = image.size
    factor = max(1, -(-max(width, height) // _SIDE))
    chroma = 0.0
    if image.mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(image.convert("RGB").reduce(factor), dtype=np.int16)
        chroma = float((rgb.max(axis=2) - rgb.min(axis=2)).mean()) / 255.0
    gray = to_gray(image).reduce(factor)  # a new image: the caller's frame is never changed
    plane = np.asarray(gray, dtype=np.float32)
    if gray.mode == "L":
        plane = plane * np.float32(1.0 / 255.0)
    std = float(plane.std())
    vertical = float(np.abs(np.diff(plane, axis=0)).mean()) if plane.shape[0] > 1 else 0.0
    horizontal = float(np.abs(np.diff(plane, axis=1)).mean()) if plane.shape[1] > 1 else 0.0
    return np.array(
        [
            float(plane.mean()),
            std,
            float((plane >= _SATURATED).mean()),
            float((plane <= _DARK).mean()),
            width / height,
            chroma,
            vertical / max(horizontal, 1e-6),
            (vertical + horizontal) / max(std, 1e-6),
        ],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class QualityBounds:
    """Per-measurement bounds; NaN means that side is not checked."""

    low: np.ndarray  # (len(QUALITY_FEATURES),) float64
    high: np.ndarray

    def reason(self, features: np.ndarray) -> str | None:
        """None when every measurement is within bounds, else the first QUALITY_REASONS that applies."""
        if features[1] <= BLANK_STD:
            return "blank"
        found = set()
        for index, name in enumerate(QUALITY_FEATURES):
            below, above = _REASON_OF[name]
            value = features[index]
            if below and value < self.low[index]:
                found.add(below)
            if above and value > self.high[index]:
                found.add(above)
        return next((reason for reason in QUALITY_REASONS if reason in found), None)

    def to_json(self) -> dict[str, Any]:
        def side(values: np.ndarray) -> dict[str, float | None]:
            return {
                name: (None if math.isnan(v) else round(float(v), 6))
                for name, v in zip(QUALITY_FEATURES, values, strict=True)
            }

        return {"low": side(self.low), "high": side(self.high)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QualityBounds:
        def side(values: Mapping[str, Any]) -> np.ndarray:
            return np.array(
                [math.nan if values[name] is None else float(values[name]) for name in QUALITY_FEATURES]
            )

        return cls(low=side(data["low"]), high=side(data["high"]))


@dataclass(frozen=True)
class OodDetector:
    """score(f) = min over classes c of |(f/|f| - mu_c) W|^2 / dims, where W whitens the shared
    covariance of the unit-length training features. `class_means` are the mu_c already projected
    (mu_c W), so a score costs one (d x d) product."""

    projection: np.ndarray  # (d, d) float32
    class_means: np.ndarray  # (classes, d) float32, projected
    threshold: float

    @property
    def dims(self) -> int:
        return self.projection.shape[0]

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Scores of features (N, d): float64 (N,)."""
        if features.ndim != 2 or features.shape[1] != self.dims:
            raise ValueError(f"features of shape {features.shape}; the detector expects (N, {self.dims})")
        features = np.asarray(features, dtype=np.float32)
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.float32(1e-12))
        projected = unit @ self.projection
        squared = ((projected[:, None, :] - self.class_means[None, :, :]).astype(np.float64) ** 2).sum(-1)
        return squared.min(axis=1) / self.dims


@dataclass(frozen=True)
class GateVerdict:
    gradable: bool
    reason: str | None  # "quality:<what>" or "out_of_distribution"; None when gradable
    ood_score: float | None  # None when the image never reached the model's features


@dataclass(frozen=True)
class SafetyGate:
    quality: QualityBounds
    ood: OodDetector
    summary: dict[str, Any]  # gate.json: how it was fitted and what it measured (for /models and cards)

    def quality_reason(self, image: Image.Image) -> str | None:
        reason = self.quality.reason(quality_features(image))
        return None if reason is None else f"quality:{reason}"

    def verdicts(self, quality_reasons: Sequence[str | None], features: np.ndarray) -> list[GateVerdict]:
        """One verdict per image from its quality reason and its penultimate features; a quality
        problem is reported before the out-of-distribution score."""
        scores = self.ood.scores(features)
        verdicts = []
        for reason, score in zip(quality_reasons, scores.tolist(), strict=True):
            if reason is None and score > self.ood.threshold:
                reason = OOD_REASON
            verdicts.append(GateVerdict(gradable=reason is None, reason=reason, ood_score=float(score)))
        return verdicts

    def files(self) -> dict[str, bytes]:
        """The bundle files (GATE_FILES) of this gate."""
        summary = {
            **self.summary,
            "quality": {**self.summary.get("quality", {}), "bounds": self.quality.to_json()},
        }
        return ood_files(self.ood, summary, GATE_JSON, OOD_ARRAYS)


def ood_files(
    ood: OodDetector, summary: Mapping[str, Any], json_name: str, arrays_name: str
) -> dict[str, bytes]:
    """A JSON document (`summary`, the detector's threshold and dimensions) and the detector's arrays."""
    document = {
        **summary,
        "format": GATE_FORMAT,
        "ood": {**summary.get("ood", {}), "threshold": ood.threshold, "dims": ood.dims},
    }
    arrays = {
        "projection": np.ascontiguousarray(ood.projection, dtype=np.float32),
        "class_means": np.ascontiguousarray(ood.class_means, dtype=np.float32),
    }
    return {
        json_name: (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(),
        arrays_name: save(arrays),
    }


def _read_ood(bundle_dir: Path, json_name: str, arrays_name: str) -> tuple[OodDetector, dict[str, Any]]:
    try:
        document = json.loads((bundle_dir / json_name).read_text())
        if document.get("format") != GATE_FORMAT:
            raise ValueError(f"format {document.get('format')!r} is not {GATE_FORMAT}")
        arrays = load_file(str(bundle_dir / arrays_name))
        projection, means = arrays["projection"], arrays["class_means"]
        threshold = float(document["ood"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir}: unreadable safety gate ({json_name}): {exc}") from exc
    square = projection.ndim == 2 and projection.shape[0] == projection.shape[1]
    if not square or means.ndim != 2 or means.shape[1] != projection.shape[0] or not math.isfinite(threshold):
        raise BundleError(
            f"{bundle_dir}: inconsistent safety gate arrays in {arrays_name} (projection {projection.shape}, "
            f"class means {means.shape}, threshold {threshold})"
        )
    summary = {k: v for k, v in document.items() if k != "format"}
    return OodDetector(projection, means, threshold), summary


def _listed(bundle_dir: Path, listed: Mapping[str, str], names: tuple[str, str]) -> bool:
    present = [name for name in names if name in listed]
    if present and len(present) != len(names):
        raise BundleError(f"{bundle_dir}: the safety gate needs both {' and '.join(names)}")
    return bool(present)


def load_gate(bundle_dir: Path, listed: Mapping[str, str], precision: str = "fp32") -> SafetyGate | None:
    """The gate of a verified bundle (`listed`: its bundle.json files), or None when it has none.
    `precision` "int8": with the INT8 model's own out-of-distribution statistics where the bundle has
    them (bundles whose INT8 model kept the fp32 verdicts use the fp32 ones)."""
    if not _listed(bundle_dir, listed, GATE_FILES):
        return None
    ood, summary = _read_ood(bundle_dir, GATE_JSON, OOD_ARRAYS)
    try:
        quality = QualityBounds.from_json(summary["quality"]["bounds"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{bundle_dir}: unreadable safety gate quality bounds: {exc}") from exc
    if precision == "int8" and _listed(bundle_dir, listed, INT8_GATE_FILES):
        int8_ood, own = _read_ood(bundle_dir, INT8_GATE_JSON, INT8_OOD_ARRAYS)
        if int8_ood.dims != ood.dims:
            raise BundleError(f"{bundle_dir}: the INT8 gate has {int8_ood.dims} dimensions, not {ood.dims}")
        ood, summary = int8_ood, {**summary, **own, "precision": "int8"}
    return SafetyGate(quality=quality, ood=ood, summary=summary)
