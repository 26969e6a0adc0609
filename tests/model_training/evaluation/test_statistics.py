"""McNemar's exact test and the patient-clustered bootstrap, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from model_training.evaluation.statistics import clustered_bootstrap_ci, mcnemar_exact, ovr_macro_auc


def test_mcnemar_counts_discordant_pairs_and_gives_the_binomial_tail():
    labels = [0] * 10
    # A alone right on 1 image, B alone right on 6, both right on 2, both wrong on 1.
    a = [0, 1, 1, 1, 1, 1, 1, 0, 0, 2]
    b = [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    result = mcnemar_exact(labels, a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (1, 6)
    # Two-sided exact: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128.
    assert result["p_value"] == pytest.approx(2 * 8 / 128)


def test_mcnemar_of_identical_predictions_is_one():
    assert mcnemar_exact([0, 1, 2], [0, 2, 2], [0, 2, 2])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        mcnemar_exact([0, 1], [0], [0, 1])


def test_bootstrap_resamples_whole_patients():
    # Ten patients of four images each; a patient's images are all right or all wrong (correlated).
    patients = np.repeat([f"p{i}" for i in range(10)], 4)
    correct = np.repeat([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], 4).astype(float)
    seen_sizes = set()

    def accuracy(indices):
        seen_sizes.add(len(indices))
        return float(correct[indices].mean())

    clustered = clustered_bootstrap_ci(accuracy, patients, resamples=500, seed=1)
    # Every resample holds 10 whole patients: 40 images, never a patient split.
    assert seen_sizes == {40}
    assert clustered["clusters"] == 10 and clustered["undefined"] == 0
    assert clustered["low"] < 0.7 < clustered["high"]
    # Resampling images as if they were independent understates the spread of correlated data.
    per_image = clustered_bootstrap_ci(
        lambda i: float(correct[i].mean()), np.arange(40), resamples=500, seed=1
    )
    assert (clustered["high"] - clustered["low"]) > 1.5 * (per_image["high"] - per_image["low"])


def test_bootstrap_skips_and_counts_undefined_resamples():
    patients = ["a", "b"]
    result = clustered_bootstrap_ci(
        lambda indices: None if len(set(indices.tolist())) < 2 else 1.0, patients, resamples=200, seed=0
    )
    # Half of the resamples draw one patient twice: undefined, skipped and counted.
    assert 60 < result["undefined"] < 140
    assert result["low"] == result["high"] == 1.0


def test_rank_auc_equals_sklearns_macro_one_vs_rest():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=200)
    # Rows drawn from a small palette of probability vectors: many tied scores, which the rank
    # formula must count as sklearn's ROC curve does (half).
    palette = rng.dirichlet([1, 1, 1], size=12)
    probabilities = palette[rng.integers(0, 12, size=200)]
    probabilities[labels == 2] = palette[np.argmax(palette[:, 2])]  # some signal
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=[0, 1, 2])
    assert ovr_macro_auc(labels, probabilities) == pytest.approx(expected, abs=1e-12)
    assert ovr_macro_auc(labels[labels != 1], probabilities[labels != 1]) is None
