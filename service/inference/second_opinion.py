"""When the teacher is asked, and what its answer means.

Policy (KDOCT_SECOND_OPINION, or `?second_opinion=` per request):
- never:  the student alone.
- auto:   the teacher reviews every result whose calibrated student confidence is below the threshold.
- always: the teacher reviews every result.
`refer` is true when the student is unsure (confidence below the threshold) or the teacher disagrees.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["POLICIES", "Policy", "frames_to_review", "outcome", "refer"]

Policy = Literal["never", "auto", "always"]
POLICIES: tuple[Policy, ...] = ("never", "auto", "always")


def frames_to_review(policy: Policy, confidences: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the results the teacher must review under `policy`."""
    if policy == "always":
        return np.arange(len(confidences))
    if policy == "auto":
        return np.flatnonzero(confidences < threshold)
    return np.empty(0, dtype=np.int64)


def outcome(student_label: str, teacher_label: str) -> Literal["agree", "disagree"]:
    return "agree" if student_label == teacher_label else "disagree"


def refer(confidence: float, threshold: float, teacher_agrees: bool | None) -> bool:
    return confidence < threshold or teacher_agrees is False
