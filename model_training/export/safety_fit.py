"""Fit the safety gate (kdoct/safety.py) of a trained model on its own training and validation images.

- Quality bounds: for each measurement, the 0.5th and 99.5th percentiles over the training images,
  widened by a quarter of the 5th-95th percentile range (at least `_MIN_MARGIN`): wide enough that a
  real B-scan of the same source is rarely refused, narrow enough that a blank frame, a photograph
  or noise is.
- Out-of-distribution: class means and one shared covariance of the unit-length penultimate
  features of the training images, the covariance shrunk towards a scaled identity by the
  Ledoit-Wolf estimate (a few hundred images cannot estimate a 1,280-dimensional covariance on
  their own); the threshold is
  the `keep` quantile (95 %) of the validation images' scores, so about 5 % of in-distribution
  images are flagged by design.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.covariance import ledoit_wolf

from kdoct.drift import drift_reference
from kdoct.models import LogitsAndFeatures
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.safety import QUALITY_FEATURES, OodDetector, QualityBounds, SafetyGate, quality_features

__all__ = [
    "DEFAULT_KEEP",
    "fit_ood",
    "fit_quality_bounds",
    "fit_safety_gate",
    "fit_safety_gate_oof",
    "penultimate_features",
]

log = logging.getLogger(__name__)

DEFAULT_KEEP = 0.95
_QUANTILES = (0.005, 0.995)
_MARGIN_OF_SPREAD = 0.25
# Smallest widening per measurement, in its own unit: chroma is 0 on every gray training image, and a
# gray B-scan saved as RGB JPEG carries a little chroma noise; aspect ratios come in a few sizes.
_MIN_MARGIN = {"aspect": 0.05, "chroma": 0.03, "saturated": 0.02}
_DEFAULT_MIN_MARGIN = 0.01
# Measurements checked on one side only (kdoct.safety): the other bound is not stored.
_UPPER_ONLY = ("saturated", "chroma")


# How the out-of-distribution score is computed, recorded in every gate.json.
_DETECTOR = {
    "method": "mahalanobis on unit-length features, shared covariance, Ledoit-Wolf shrinkage",
    "score": "min over classes of the squared Mahalanobis distance of the unit-length features, "
    "divided by the feature dimensions",
}


def _quality_summary(images: int) -> dict[str, Any]:
    return {
        "features": list(QUALITY_FEATURES),
        "fitted_on_images": images,
        "rule": f"percentiles {_QUANTILES[0] * 100:g}-{_QUANTILES[1] * 100:g} of the training images, "
        f"widened by {_MARGIN_OF_SPREAD:g} x the 5-95 percentile range",
    }


def fit_quality_bounds(features: np.ndarray) -> QualityBounds:
    """Bounds from the quality features (N, 8) of the training images."""
    if features.ndim != 2 or features.shape[1] != len(QUALITY_FEATURES) or len(features) < 2:
        raise ValueError(
            f"quality features of shape {features.shape}: need (N >= 2, {len(QUALITY_FEATURES)})"
        )
    low_q, high_q = np.quantile(features, _QUANTILES, axis=0)
    spread = np.quantile(features, 0.95, axis=0) - np.quantile(features, 0.05, axis=0)
    margins = np.array(
        [
            max(_MARGIN_OF_SPREAD * spread[i], _MIN_MARGIN.get(name, _DEFAULT_MIN_MARGIN))
            for i, name in enumerate(QUALITY_FEATURES)
        ]
    )
    low, high = low_q - margins, high_q + margins
    for name in _UPPER_ONLY:
        low[QUALITY_FEATURES.index(name)] = np.nan
    return QualityBounds(low=low, high=high)


def fit_ood(
    features: np.ndarray, labels: np.ndarray, num_classes: int, val_features: np.ndarray, keep: float
) -> tuple[OodDetector, dict[str, Any]]:
    """The Mahalanobis detector of training features (N, d) with class `labels`, its threshold the
    `keep` quantile of the validation features' scores."""
    if not 0.5 <= keep < 1:
        raise ValueError(f"keep must be in [0.5, 1), got {keep}")
    detector, shrinkage = _detector(features, labels, num_classes)
    val_scores = detector.scores(np.asarray(val_features, dtype=np.float32))
    threshold = float(np.quantile(val_scores, keep))
    train_scores = detector.scores(np.asarray(features, dtype=np.float32))
    info = {
        **_DETECTOR,
        "shrinkage": round(shrinkage, 6),
        "keep": keep,
        "threshold_from": "validation images",
        "fitted_on_images": len(features),
        "threshold_on_images": len(val_scores),
        "median_score": {
            "training": round(float(np.median(train_scores)), 6),
            "validation": round(float(np.median(val_scores)), 6),
        },
    }
    return OodDetector(detector.projection, detector.class_means, threshold), info


def _detector(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[OodDetector, float]:
    """The Mahalanobis detector (threshold 0) of training features (N, d) and its Ledoit-Wolf shrinkage."""
    features = np.asarray(features, dtype=np.float64)
    features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    present = sorted(set(labels.tolist()))
    if present != list(range(num_classes)):
        raise ValueError(f"the training features cover classes {present}, not all {num_classes}")
    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    centred = features - means[labels]
    covariance, shrinkage = ledoit_wolf(centred, assume_centered=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-12)
    projection = (eigenvectors / np.sqrt(eigenvalues)).astype(np.float32)
    return OodDetector(projection, (means @ projection).astype(np.float32), threshold=0.0), float(shrinkage)


def fit_ood_from_ratio(
    features: np.ndarray, labels: np.ndarray, num_classes: int, oof: dict[str, Any]
) -> tuple[OodDetector, dict[str, Any], float]:
    """The detector of a model trained on every patient: its training features fit it as in `fit_ood`;
    the threshold is the cross-validated ratio (model_training/evaluation/oof.py) times the median score
    of these same training images (the model's reference). Returns the detector, its summary and the
    reference."""
    detector, shrinkage = _detector(features, labels, num_classes)
    train_scores = detector.scores(np.asarray(features, dtype=np.float32))
    reference = float(np.median(train_scores))
    ratio = float(oof["threshold_ratio"])
    info = {
        **_DETECTOR,
        "shrinkage": round(shrinkage, 6),
        "keep": float(oof["keep"]),
        "threshold_from": "cross-validation: the out-of-fold ratio of unseen patients' scores to the fold "
        "model's median training-image score, times this model's median training-image score",
        "threshold_ratio": ratio,
        "reference": round(reference, 6),
        "fitted_on_images": len(features),
        "median_score": {"training": round(reference, 6)},
    }
    return OodDetector(detector.projection, detector.class_means, ratio * reference), info, reference


def penultimate_features(
    model: torch.nn.Module, images: Sequence[Image.Image], spec: PreprocessSpec, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of `images` through the eval transform, float32, on the model's device."""
    wrapped = LogitsAndFeatures(model).eval()
    device = next(model.parameters()).device
    logits, features = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(preprocess_batch(list(images[start : start + batch_size]), spec))
            batch_logits, batch_features = wrapped(batch.to(device))
            logits.append(batch_logits.float().cpu().numpy())
            features.append(batch_features.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(features)


def fit_safety_gate(
    model: torch.nn.Module,
    *,
    train_images: Sequence[Image.Image],
    train_labels: Sequence[int],
    val_images: Sequence[Image.Image],
    num_classes: int,
    spec: PreprocessSpec,
    keep: float = DEFAULT_KEEP,
    batch_size: int = 32,
) -> SafetyGate:
    """The gate of `model` (eval mode) from its training and validation images (decoded, as served)."""
    quality = fit_quality_bounds(np.stack([quality_features(image) for image in train_images]))
    _, train_features = penultimate_features(model, train_images, spec, batch_size)
    _, val_features = penultimate_features(model, val_images, spec, batch_size)
    ood, ood_info = fit_ood(train_features, np.asarray(train_labels), num_classes, val_features, keep)
    val_quality = [quality.reason(quality_features(image)) for image in val_images]
    val_scores = ood.scores(val_features).tolist()
    flagged_quality = sum(reason is not None for reason in val_quality)
    flagged = sum(
        reason is not None or score > ood.threshold
        for reason, score in zip(val_quality, val_scores, strict=True)
    )
    summary = {
        "quality": _quality_summary(len(train_images)),
        "ood": ood_info,
        "validation": {
            "images": len(val_images),
            "flagged_quality": flagged_quality,
            "flagged_total": flagged,
            "flag_rate": round(flagged / max(1, len(val_images)), 4),
        },
        # What the service's drift alarms compare live traffic with (kdoct/drift.py).
        "drift": drift_reference(train_labels, num_classes, val_scores, ood.threshold),
    }
    log.info(
        "safety gate: OOD threshold %.4f (keep %.0f %% of %d validation images), %d/%d validation images "
        "flagged (%d by quality)",
        ood.threshold, keep * 100, len(val_images), flagged, len(val_images), flagged_quality,
    )  # fmt: skip
    return SafetyGate(quality=quality, ood=ood, summary=summary)


def fit_safety_gate_oof(
    model: torch.nn.Module,
    *,
    train_images: Sequence[Image.Image],
    train_labels: Sequence[int],
    num_classes: int,
    spec: PreprocessSpec,
    oof: dict[str, Any],
    batch_size: int = 32,
) -> SafetyGate:
    """The gate of a model trained on every patient (no validation images): quality bounds and feature
    statistics from its training images, the OOD threshold from the cross-validated ratio `oof` (the
    role's "ood" entry of oof.json), and the drift reference from the out-of-fold ratios at this model's
    scale."""
    quality = fit_quality_bounds(np.stack([quality_features(image) for image in train_images]))
    _, train_features = penultimate_features(model, train_images, spec, batch_size)
    ood, ood_info, reference = fit_ood_from_ratio(train_features, np.asarray(train_labels), num_classes, oof)
    unseen_scores = [ratio * reference for ratio in oof["ratios"]]
    summary = {
        "quality": _quality_summary(len(train_images)),
        "ood": ood_info,
        # What unseen patients met, measured leave one fold out (model_training/evaluation/oof.py).
        "cross_validation": {
            "flagged": oof["flagged"],
            "auroc": oof.get("auroc_against_in_distribution", {}),
        },
        "drift": drift_reference(train_labels, num_classes, unseen_scores, ood.threshold),
    }
    log.info(
        "safety gate: OOD threshold %.4f (%.3f x the median training score %.4f, from cross-validation)",
        ood.threshold, ood_info["threshold_ratio"], reference,
    )  # fmt: skip
    return SafetyGate(quality=quality, ood=ood, summary=summary)
