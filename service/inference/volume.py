"""The volume-level result of a multi-frame DICOM from its per-frame results.

Rule ("most severe frame"), chosen so that a single CNV B-scan is never averaged away by a hundred
normal ones:
- label: the most severe class that is the top class of at least one frame, by the severity order
  normal < drusen < dme < cnv (classes outside this order rank by their position in the bundle,
  after the known ones);
- confidence: the highest probability of that label on any frame whose top class it is;
- probabilities: the per-class maximum over frames, renormalised to sum to 1 (a screening score: it
  keeps every class's strongest evidence, it is not a calibrated probability);
- refer: true when any deciding frame is referred, or the volume is ungradable.

The safety gate: only gradable frames decide (an ungradable frame, a blank edge B-scan or one out of
the model's distribution, never sets the volume's label); when no frame is gradable, every frame
decides but the volume is `gradable: false`, its reason the most common reason of its frames.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["SEVERITY", "aggregate_volume", "volume_gate"]

SEVERITY = {"normal": 0, "drusen": 1, "dme": 2, "cnv": 3}


def _severity(name: str, position: int) -> tuple[int, int]:
    return (SEVERITY[name], 0) if name in SEVERITY else (len(SEVERITY), position)


def aggregate_volume(probabilities: np.ndarray, class_names: Sequence[str]) -> tuple[int, float, np.ndarray]:
    """(label index, confidence, volume probabilities) for per-frame probabilities (frames, classes)."""
    top = probabilities.argmax(axis=1)
    label = max(set(top.tolist()), key=lambda index: _severity(class_names[index], index))
    confidence = float(probabilities[top == label, label].max())
    maxima = probabilities.max(axis=0)
    return label, confidence, maxima / maxima.sum()


def volume_gate(
    frames: Sequence[tuple[bool | None, str | None]],
) -> tuple[bool | None, str | None, np.ndarray]:
    """(gradable, reason, indices of the deciding frames) from each frame's (gradable, reason);
    gradable None (gate off) counts as gradable."""
    indices = np.arange(len(frames))
    if all(gradable is None for gradable, _ in frames):
        return None, None, indices
    deciding = np.array(
        [i for i, (gradable, _) in enumerate(frames) if gradable is not False], dtype=np.int64
    )
    if len(deciding):
        return True, None, deciding
    counts = Counter(reason for _, reason in frames)
    # Most common first; a tie goes to the reason of the earliest frame.
    reason = max(counts, key=lambda r: (counts[r], -next(i for i, (_, x) in enumerate(frames) if x == r)))
    return False, reason, indices
