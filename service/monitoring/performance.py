"""Per-class sensitivity, specificity and PPV with Wilson score 95 % intervals: pure functions, no
database, no web framework (the model-promotion evidence imports them too).

For class c of a model, over (actual, predicted) pairs, one-vs-rest:
  tp: actual c, predicted c        fn: actual c, predicted other
  fp: actual other, predicted c    tn: actual other, predicted other
  sensitivity = tp / (tp + fn), specificity = tn / (tn + fp), PPV = tp / (tp + fp)
each with the Wilson score interval (Wilson 1927; Newcombe 1998, method 3), which stays inside [0, 1]
and is not degenerate at 0/n or n/n. A figure with no trials (no case of the class, no prediction of
it) is None, never 0 or 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Z_95",
    "ClassPerformance",
    "Interval",
    "class_performance",
    "class_performance_from_counts",
    "wilson",
]

# The standard normal quantile of 0.975: a two-sided 95 % interval.
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A proportion and its interval; all three None when there were no trials."""

    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ClassPerformance:
    name: str
    tp: int
    fn: int
    fp: int
    tn: int
    sensitivity: Interval
    specificity: Interval
    ppv: Interval


def wilson(successes: int, trials: int, z: float = Z_95) -> Interval:
    """The Wilson score interval of successes / trials:
    centre = (p + z²/2n) / (1 + z²/n), half-width = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)."""
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return Interval(None, None, None)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    # 0/n and n/n: the bound at the edge is exactly 0 or 1 (not a rounding error away from it).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(p, low, high)


def class_performance_from_counts(
    counts: Mapping[tuple[str, str], int], class_names: Sequence[str]
) -> list[ClassPerformance]:
    """As class_performance, from the number of times each (actual, predicted) pair occurred."""
    known = set(class_names)
    strange = sorted({name for pair in counts for name in pair if name not in known})
    if strange:
        raise ValueError(f"labels {strange} are not among the classes {list(class_names)}")
    total = sum(counts.values())
    result = []
    for name in class_names:
        tp = counts.get((name, name), 0)
        actual = sum(n for (a, _), n in counts.items() if a == name)
        predicted = sum(n for (_, p), n in counts.items() if p == name)
        fn, fp = actual - tp, predicted - tp
        tn = total - tp - fn - fp
        result.append(
            ClassPerformance(
                name=name,
                tp=tp,
                fn=fn,
                fp=fp,
                tn=tn,
                sensitivity=wilson(tp, tp + fn),
                specificity=wilson(tn, tn + fp),
                ppv=wilson(tp, tp + fp),
            )
        )
    return result


def class_performance(pairs: Iterable[tuple[str, str]], class_names: Sequence[str]) -> list[ClassPerformance]:
    """One-vs-rest figures of every class in ``class_names`` (in that order) over ``pairs`` of
    (actual, predicted). A label outside ``class_names`` is a ValueError."""
    return class_performance_from_counts(
        Counter((actual, predicted) for actual, predicted in pairs), class_names
    )
