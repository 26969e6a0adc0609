"""Significance and uncertainty of cross-validation results, from pooled held-out predictions.

- McNemar's exact test: do two models that predicted the same images err on different ones more
  often than chance allows? Only the discordant pairs count (b: only A right, c: only B right);
  under the null each is a fair coin, so the two-sided p-value is a binomial tail.
- Patient-clustered bootstrap: B-scans of one patient are correlated, so resampling images would
  understate the uncertainty. Patients are resampled with replacement, each bringing all of their
  images, and the metric is recomputed on every resample; the 2.5th and 97.5th percentiles bound
  the 95 % interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest, rankdata

__all__ = ["clustered_bootstrap_ci", "mcnemar_exact", "ovr_macro_auc"]


def ovr_macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC (sklearn's `roc_auc_score(multi_class="ovr", average="macro")`) by the
    Mann-Whitney rank formula, without sklearn's per-call validation: the bootstrap calls it thousands
    of times. None when a class is absent (its AUC is undefined)."""
    labels = np.asarray(labels)
    scores = []
    for column in range(probabilities.shape[1]):
        positive = labels == column
        n_positive = int(positive.sum())
        n_negative = len(labels) - n_positive
        if n_positive == 0 or n_negative == 0:
            return None
        ranks = rankdata(probabilities[:, column])  # ties share their mean rank, as in the U statistic
        u = ranks[positive].sum() - n_positive * (n_positive + 1) / 2
        scores.append(u / (n_positive * n_negative))
    return float(np.mean(scores))


def mcnemar_exact(labels: Sequence[int], predicted_a: Sequence[int], predicted_b: Sequence[int]) -> dict:
    """{'a_only_correct': b, 'b_only_correct': c, 'p_value': two-sided exact p} (p = 1 when b = c = 0)."""
    labels, predicted_a, predicted_b = (np.asarray(v) for v in (labels, predicted_a, predicted_b))
    if not len(labels) == len(predicted_a) == len(predicted_b):
        raise ValueError("labels and both predictions must have the same length")
    correct_a, correct_b = predicted_a == labels, predicted_b == labels
    a_only = int(np.sum(correct_a & ~correct_b))
    b_only = int(np.sum(~correct_a & correct_b))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only_correct": a_only, "b_only_correct": b_only, "p_value": p_value}


def clustered_bootstrap_ci(
    metric: Callable[[np.ndarray], float | None],
    clusters: Sequence[str],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile interval of `metric(indices)` over resamples of whole clusters (patients).

    `metric` gets the image indices of one resample (a patient drawn twice contributes its images
    twice) and may return None where it is undefined (an AUC without one of the classes); such
    resamples are skipped and counted.
    """
    clusters = np.asarray(clusters)
    names, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    values, undefined = [], 0
    for _ in range(resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        value = metric(np.concatenate([members[i] for i in drawn]))
        if value is None:
            undefined += 1
        else:
            values.append(value)
    if not values:
        return {"low": None, "high": None, "resamples": resamples, "undefined": undefined}
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return {
        "low": float(low),
        "high": float(high),
        "resamples": resamples,
        "undefined": undefined,
        "clusters": len(members),
    }
