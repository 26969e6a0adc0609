"""The two KD-OCT losses: focal loss for the teacher, logit distillation for the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "focal_loss", "soft_target_cross_entropy"]


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch mean of w[y] * (1 - p_y)^gamma * (-log p_y), p = softmax(logits).

    A plain mean over the batch (not divided by the sum of weights as `F.cross_entropy(weight=...)`
    does), so gamma=0 and weight=None equals cross-entropy exactly.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p_target = log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    p_target = log_p_target.exp()
    loss = -((1.0 - p_target) ** gamma) * log_p_target if gamma else -log_p_target
    if weight is not None:
        loss = loss * weight.to(loss.device, loss.dtype)[targets.long()]
    return loss.mean()


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 4.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    KL uses reduction 'batchmean' (the true KL per sample); T^2 keeps the soft term's gradient scale
    independent of T (Hinton et al.). alpha=0 is plain cross-entropy: the no-distillation baseline.
    """
    student_logits = student_logits.float()
    hard = F.cross_entropy(student_logits, targets.long())
    if alpha == 0:
        return hard
    student_log_soft = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_soft = F.log_softmax(teacher_logits.float().detach() / temperature, dim=-1)
    soft = F.kl_div(student_log_soft, teacher_log_soft, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability targets (mixup/cutmix, label smoothing)."""
    return -(soft_targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
