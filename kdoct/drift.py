"""What drift is measured against, shared by training (which records it in the safety gate's file) and
the service (which exports it and counts live traffic alike): the training label prior, and the
validation patients' out-of-distribution scores in bands of the gate's threshold.

Bands are of score / threshold, so every model has the same ones, and a live histogram and its
reference line up whatever the model's own scale: a band's name is its upper edge ("inf": above 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["OOD_BAND_EDGES", "OOD_BANDS", "drift_reference", "ood_band"]

OOD_BAND_EDGES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
OOD_BANDS = tuple(f"{edge:g}" for edge in OOD_BAND_EDGES) + ("inf",)
# Half an image per band: a band no validation image fell in still has a share above 0, so the
# population stability index (sum of (p - q) ln(p / q)) stays finite.
_SMOOTHING = 0.5


def ood_band(score: float, threshold: float) -> str:
    """The band of one out-of-distribution score."""
    ratio = score / threshold
    for edge, name in zip(OOD_BAND_EDGES, OOD_BANDS, strict=False):
        if ratio <= edge:
            return name
    return OOD_BANDS[-1]


def drift_reference(
    train_labels: Sequence[int], num_classes: int, val_scores: Sequence[float], threshold: float
) -> dict[str, Any]:
    """The gate file's "drift" entry: the share of each class (by index) among the training images,
    and the share of the validation images' scores in each band (smoothed)."""
    counts = np.bincount(np.asarray(train_labels, dtype=int), minlength=num_classes)
    bands = dict.fromkeys(OOD_BANDS, 0)
    for score in val_scores:
        bands[ood_band(float(score), threshold)] += 1
    total = len(val_scores) + _SMOOTHING * len(OOD_BANDS)
    return {
        "class_prior": [round(float(count) / max(1, int(counts.sum())), 6) for count in counts],
        "training_images": int(counts.sum()),
        "ood_bands": {name: round((count + _SMOOTHING) / total, 6) for name, count in bands.items()},
        "validation_images": len(val_scores),
    }
