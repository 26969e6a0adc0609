"""The one softmax: rows sum to 1, temperature flattens, large logits neither overflow nor lose the
order, and log_softmax is its logarithm."""

from __future__ import annotations

import numpy as np

from kdoct.probabilities import log_softmax, softmax


def test_softmax_and_log_softmax_agree_and_stay_finite() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0], [-800.0, 0.0, 800.0]], dtype=np.float32)
    probabilities = softmax(logits)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and np.isfinite(probabilities).all()
    assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()
    np.testing.assert_allclose(np.exp(log_softmax(logits)), probabilities, atol=1e-12)
    np.testing.assert_allclose(softmax(logits[0]), [0.09003057, 0.24472847, 0.66524096], atol=1e-8)
    flatter = softmax(logits[:1], temperature=4.0)
    assert flatter.max() < probabilities[0].max() and np.isfinite(log_softmax(logits, 0.5)).all()
