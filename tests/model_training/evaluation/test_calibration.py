"""Temperature scaling and ECE against values worked out independently."""

from __future__ import annotations

import numpy as np
import pytest

from model_training.evaluation.calibration import (
    calibrated_ece_floor,
    expected_calibration_error,
    fit_temperature,
)


def test_ece_by_hand():
    # Two bins hold images: confidence 0.95 (3 images, 2 right) and 0.55 (1 image, right).
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 0])
    expected = 3 / 4 * abs(2 / 3 - 0.95) + 1 / 4 * abs(1.0 - 0.55)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_ece_floor_of_a_calibrated_model_is_the_binomial_mean_deviation():
    # Four answers at confidence 0.6, right with probability 0.6 each: one bin, so the ECE is
    # |X/4 - 0.6| with X ~ Binomial(4, 0.6), whose mean is worked out by hand: 0.20736.
    probabilities = np.tile([0.6, 0.4], (4, 1))
    assert calibrated_ece_floor(probabilities, draws=5000) == pytest.approx(0.20736, abs=0.008)


def test_ece_floor_falls_with_more_images_and_vanishes_for_certain_answers():
    rng = np.random.default_rng(1)
    raw = rng.dirichlet([1.0, 1.0, 1.0], size=10_000)
    few, many = calibrated_ece_floor(raw[:100], draws=200), calibrated_ece_floor(raw, draws=20)
    assert few > 3 * many > 0
    certain = np.tile([0.9999, 0.00005, 0.00005], (100, 1))
    assert calibrated_ece_floor(certain, draws=200) < 0.001


def _overconfident(temperature: float, count: int, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / temperature): `temperature` is the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(count, 3))
    scaled = np.exp(logits / temperature - (logits / temperature).max(axis=1, keepdims=True))
    probabilities = scaled / scaled.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in probabilities])
    return logits, labels


@pytest.mark.parametrize("truth", [0.5, 2.0])
def test_temperature_recovers_the_truth_where_the_data_decide(truth):
    logits, labels = _overconfident(truth, 4000)
    plain = fit_temperature(logits, labels, prior_sigma=None)
    assert plain == pytest.approx(truth, rel=0.1)
    # With thousands of images the prior is negligible.
    assert fit_temperature(logits, labels) == pytest.approx(plain, rel=0.02)


def test_a_separable_validation_split_does_not_drive_the_temperature_to_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=80)
    logits = rng.normal(0, 1, size=(80, 3))
    logits[np.arange(80), labels] += 6.0  # every image right, by a margin
    assert (logits.argmax(axis=1) == labels).all()
    # Plain NLL sharpens until its gradient vanishes (LBFGS stops near T 0.13 here, any lower is as
    # good); the prior keeps the temperature where the margins put it.
    assert fit_temperature(logits, labels, prior_sigma=None) < 0.2
    assert 0.4 < fit_temperature(logits, labels) < 1.0
