"""The two KD-OCT losses against values computed independently in float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_training.train.losses import distillation_loss, focal_loss


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _numpy_focal(logits, targets, gamma, weight):
    log_p = _log_softmax(logits)[np.arange(len(targets)), targets]
    w = np.ones(logits.shape[1]) if weight is None else weight
    return float(np.mean(w[targets] * (1 - np.exp(log_p)) ** gamma * -log_p))


def _numpy_distillation(student, teacher, targets, alpha, temperature):
    ce = -_log_softmax(student)[np.arange(len(targets)), targets].mean()
    log_q = _log_softmax(student / temperature)
    log_p = _log_softmax(teacher / temperature)
    kl = (
        (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean()
    )  # 'batchmean': sum over classes, mean over batch
    return float((1 - alpha) * ce + alpha * temperature**2 * kl)


@pytest.fixture(params=[0, 1, 2])
def batch(request):
    rng = np.random.default_rng(request.param)
    n, c = int(rng.integers(2, 17)), int(rng.integers(2, 6))
    logits = rng.normal(0, 3, (n, c))
    teacher = rng.normal(0, 3, (n, c))
    targets = rng.integers(0, c, n)
    weight = rng.uniform(0.2, 3.0, c)
    return logits, teacher, targets, weight


def _t(array):
    return torch.tensor(array)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_matches_numpy(batch, gamma):
    logits, _, targets, weight = batch
    for w in (None, weight):
        got = focal_loss(
            _t(logits).float(), _t(targets), gamma=gamma, weight=None if w is None else _t(w).float()
        )
        assert float(got) == pytest.approx(_numpy_focal(logits, targets, gamma, w), rel=1e-5, abs=1e-6)


def test_focal_loss_without_gamma_or_weight_is_cross_entropy(batch):
    logits, _, targets, _ = batch
    got = focal_loss(_t(logits).float(), _t(targets), gamma=0.0, weight=None)
    assert float(got) == pytest.approx(float(F.cross_entropy(_t(logits).float(), _t(targets))), rel=1e-6)


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    targets = torch.tensor([0, 0])
    easy, hard = (focal_loss(logits[i : i + 1], targets[i : i + 1], gamma=2.0) for i in range(2))
    ce_easy, ce_hard = (F.cross_entropy(logits[i : i + 1], targets[i : i + 1]) for i in range(2))
    assert easy / ce_easy < hard / ce_hard < 1.0


@pytest.mark.parametrize(("alpha", "temperature"), [(0.7, 4.0), (0.3, 1.0), (1.0, 2.5), (0.0, 4.0)])
def test_distillation_loss_matches_numpy(batch, alpha, temperature):
    student, teacher, targets, _ = batch
    got = distillation_loss(_t(student).float(), _t(teacher).float(), _t(targets), alpha, temperature)
    expected = _numpy_distillation(student, teacher, targets, alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_distillation_alpha_zero_is_cross_entropy_and_ignores_teacher(batch):
    student, teacher, targets, _ = batch
    a = distillation_loss(_t(student).float(), _t(teacher).float(), _t(targets), alpha=0.0)
    b = distillation_loss(_t(student).float(), -_t(teacher).float(), _t(targets), alpha=0.0)
    assert float(a) == float(b) == pytest.approx(float(F.cross_entropy(_t(student).float(), _t(targets))))


def test_distillation_sends_no_gradient_to_the_teacher():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2, 0])).backward()
    assert student.grad is not None and teacher.grad is None
