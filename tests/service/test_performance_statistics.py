"""The statistics of real-world performance (service/monitoring/performance.py): Wilson score intervals
against published figures, and one-vs-rest counts against a confusion matrix worked by hand."""

from __future__ import annotations

import math

import pytest

from service.monitoring.performance import Interval, class_performance, class_performance_from_counts, wilson


# Newcombe RG (1998), Two-sided confidence intervals for the single proportion, Stat Med 17:857-872,
# Table I, method 3 (Wilson score, no continuity correction); statsmodels' proportion_confint(...,
# method="wilson") gives the same.
@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
     (29, 29, 0.8830, 1.0)],
)  # fmt: skip
def test_wilson_matches_newcombes_published_intervals(successes, trials, low, high) -> None:
    interval = wilson(successes, trials)
    assert interval.value == pytest.approx(successes / trials)
    assert round(interval.low, 4) == low and round(interval.high, 4) == high


def test_wilson_by_the_formula_and_at_the_edges() -> None:
    # 7/10 worked by hand: p = 0.7, z² = 3.8415; centre = (0.7 + 0.19207) / 1.38415 = 0.64449,
    # half = 1.95996 / 1.38415 * sqrt(0.021 + 0.0096037) = 0.24770.
    interval = wilson(7, 10)
    assert interval.low == pytest.approx(0.64449 - 0.24770, abs=1e-4)
    assert interval.high == pytest.approx(0.64449 + 0.24770, abs=1e-4)
    # 0/n and n/n: the bound at the edge is exactly 0 or 1, the other one is not.
    assert wilson(0, 5).low == 0.0 and 0 < wilson(0, 5).high < 1
    assert wilson(5, 5).high == 1.0 and 0 < wilson(5, 5).low < 1
    assert wilson(0, 5).high == pytest.approx(1 - wilson(5, 5).low)
    # No trials: no figure, never 0 or 1.
    assert wilson(0, 0) == Interval(None, None, None)
    # A wider z, a wider interval.
    assert wilson(7, 10, z=2.575829).low < interval.low
    for bad in ((-1, 3), (4, 3), (0, -1)):
        with pytest.raises(ValueError):
            wilson(*bad)


def test_class_performance_one_vs_rest_by_hand() -> None:
    # actual \ predicted   normal drusen cnv
    #   normal               5     1     0
    #   drusen               2     3     1
    #   cnv                  0     1     4
    matrix = {
        ("normal", "normal"): 5, ("normal", "drusen"): 1,
        ("drusen", "normal"): 2, ("drusen", "drusen"): 3, ("drusen", "cnv"): 1,
        ("cnv", "drusen"): 1, ("cnv", "cnv"): 4,
    }  # fmt: skip
    pairs = [pair for pair, n in matrix.items() for _ in range(n)]
    figures = {f.name: f for f in class_performance(pairs, ["normal", "drusen", "cnv"])}
    assert list(figures) == ["normal", "drusen", "cnv"]
    drusen = figures["drusen"]
    assert (drusen.tp, drusen.fn, drusen.fp, drusen.tn) == (3, 3, 2, 9)
    assert (
        drusen.sensitivity == wilson(3, 6)
        and drusen.specificity == wilson(9, 11)
        and drusen.ppv == wilson(3, 5)
    )
    normal, cnv = figures["normal"], figures["cnv"]
    assert (normal.tp, normal.fn, normal.fp, normal.tn) == (5, 1, 2, 9)
    assert (cnv.tp, cnv.fn, cnv.fp, cnv.tn) == (4, 1, 1, 11)
    assert math.isclose(cnv.ppv.value, 0.8)
    assert class_performance_from_counts(matrix, ["normal", "drusen", "cnv"]) == list(figures.values())


def test_a_class_never_seen_has_no_figures_and_unknown_labels_are_refused() -> None:
    (normal, dme) = class_performance([("normal", "normal")] * 3, ["normal", "dme"])
    assert normal.sensitivity.value == 1.0 and normal.specificity == Interval(None, None, None)
    assert (dme.tp, dme.fn, dme.fp, dme.tn) == (0, 0, 0, 3)
    assert dme.sensitivity.value is None and dme.ppv.value is None and dme.specificity.value == 1.0
    assert class_performance([], ["normal"])[0].sensitivity == Interval(None, None, None)
    with pytest.raises(ValueError, match="glaucoma"):
        class_performance([("glaucoma", "normal")], ["normal"])
