"""How far a candidate agrees with the serving student (and the teacher) on the requests it shadowed:
pure arithmetic over counts, shared by GET /models/candidates/{sha256}/agreement, the agreement
gauges and `model promote`'s evidence."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Agreement", "ShadowCount", "cohen_kappa", "summarise"]


@dataclass(frozen=True)
class ShadowCount:
    """How many shadow results had these values (one GROUP BY row of shadow_results)."""

    current_label: str
    candidate_label: str
    teacher_label: str | None
    current_gradable: bool | None
    candidate_gradable: bool | None
    count: int


@dataclass(frozen=True)
class Agreement:
    shadowed: int
    agreement: float | None  # share of results where the candidate's label is the current student's
    kappa: float | None  # Cohen's kappa of the same pairs (None while undefined)
    confusion: dict[str, dict[str, int]]  # current label -> candidate label -> count
    teacher_compared: int  # results where the teacher also answered
    teacher_agreement: float | None
    teacher_kappa: float | None
    # The safety gate's verdicts side by side: "gradable/gradable", "gradable/ungradable", ...
    # (current first); "off" where a model has no gate.
    gate: dict[str, int]


def cohen_kappa(confusion: Sequence[Sequence[int]]) -> float | None:
    """Cohen's kappa of a square count matrix (rows: one rater, columns: the other): (p_o - p_e) /
    (1 - p_e). None with no counts, or when chance agreement is total (both always said one class)."""
    total = sum(sum(row) for row in confusion)
    if total == 0:
        return None
    size = len(confusion)
    observed = sum(confusion[i][i] for i in range(size)) / total
    rows = [sum(confusion[i]) / total for i in range(size)]
    columns = [sum(confusion[i][j] for i in range(size)) / total for j in range(size)]
    expected = sum(r * c for r, c in zip(rows, columns, strict=True))
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _verdict(gradable: bool | None) -> str:
    return "off" if gradable is None else ("gradable" if gradable else "ungradable")


def _matrix(pairs: dict[tuple[str, str], int], class_names: Sequence[str]) -> list[list[int]]:
    return [[pairs.get((a, b), 0) for b in class_names] for a in class_names]


def summarise(counts: Iterable[ShadowCount], class_names: Sequence[str]) -> Agreement:
    """The agreement of a candidate from its grouped shadow results; labels outside `class_names`
    (a candidate of another class set is refused before it shadows) are kept in the confusion."""
    names = list(class_names)
    pairs: dict[tuple[str, str], int] = {}
    teacher_pairs: dict[tuple[str, str], int] = {}
    gate: dict[str, int] = {}
    for row in counts:
        for label in (row.current_label, row.candidate_label, row.teacher_label):
            if label is not None and label not in names:
                names.append(label)
        pairs[(row.current_label, row.candidate_label)] = (
            pairs.get((row.current_label, row.candidate_label), 0) + row.count
        )
        if row.teacher_label is not None:
            key = (row.teacher_label, row.candidate_label)
            teacher_pairs[key] = teacher_pairs.get(key, 0) + row.count
        verdicts = f"{_verdict(row.current_gradable)}/{_verdict(row.candidate_gradable)}"
        gate[verdicts] = gate.get(verdicts, 0) + row.count
    shadowed = sum(pairs.values())
    teacher_compared = sum(teacher_pairs.values())
    confusion = {a: {b: pairs.get((a, b), 0) for b in names} for a in names}
    return Agreement(
        shadowed=shadowed,
        agreement=_share_agreeing(pairs),
        kappa=cohen_kappa(_matrix(pairs, names)),
        confusion=confusion,
        teacher_compared=teacher_compared,
        teacher_agreement=_share_agreeing(teacher_pairs),
        teacher_kappa=cohen_kappa(_matrix(teacher_pairs, names)),
        gate=gate,
    )


def _share_agreeing(pairs: dict[tuple[str, str], int]) -> float | None:
    total = sum(pairs.values())
    if total == 0:
        return None
    return sum(count for (a, b), count in pairs.items() if a == b) / total
