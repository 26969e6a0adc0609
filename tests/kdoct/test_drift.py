"""The drift references training records and the service compares with (kdoct/drift.py)."""

from __future__ import annotations

import math

import pytest

from kdoct.drift import OOD_BANDS, drift_reference, ood_band


@pytest.mark.parametrize(
    ("score", "band"),
    [
        (0.0, "0.25"),
        (0.25, "0.25"),
        (0.2501, "0.5"),
        (1.0, "1"),
        (1.01, "1.5"),
        (3.9, "4"),
        (4.01, "inf"),
        (1e9, "inf"),
    ],
)
def test_scores_fall_in_bands_of_the_threshold(score: float, band: str) -> None:
    assert ood_band(score * 2.0, 2.0) == band  # bands are of score / threshold, whatever the scale


def test_the_reference_holds_the_training_prior_and_smoothed_validation_bands() -> None:
    # Training labels 0,0,0,1,2,2 (classes 0..3: class 3 has none); validation scores over threshold 1.
    reference = drift_reference([0, 0, 0, 1, 2, 2], 4, [0.1, 0.1, 0.6, 5.0], 1.0)
    assert reference["class_prior"] == [0.5, round(1 / 6, 6), round(2 / 6, 6), 0.0]
    assert (reference["training_images"], reference["validation_images"]) == (6, 4)
    shares = reference["ood_bands"]
    assert list(shares) == list(OOD_BANDS)
    # (count + 0.5) / (4 + 0.5 x 8): 2 in the first band, 1 in "0.75", 1 in "inf", none elsewhere.
    assert shares["0.25"] == round(2.5 / 8, 6) and shares["0.75"] == round(1.5 / 8, 6)
    assert shares["inf"] == round(1.5 / 8, 6) and shares["2"] == round(0.5 / 8, 6)
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-5)
    assert min(shares.values()) > 0  # no empty band: the stability index stays finite
