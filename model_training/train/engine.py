"""The training step as plain functions: one epoch, the learning-rate schedule, mixed precision, and
BatchNorm re-estimation for SWA. Evaluation (logits over a loader, TTA) is in evaluation/predict.py."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from model_training.evaluation.predict import to_device

__all__ = [
    "Precision",
    "make_precision",
    "recompute_batchnorm",
    "train_one_epoch",
    "warmup_cosine_schedule",
]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Precision:
    """Autocast dtype (None = fp32) and the GradScaler fp16 needs."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def make_precision(device: torch.device, amp: bool) -> Precision:
    """bf16 on CUDA when supported (no scaler needed), fp16 + GradScaler otherwise; fp32 on CPU,
    where autocast is usually slower than fp32 on the CPUs this runs on."""
    if not amp or device.type != "cuda":
        return Precision(None, None)
    if torch.cuda.is_bf16_supported():
        return Precision(torch.bfloat16, None)
    return Precision(torch.float16, torch.amp.GradScaler("cuda"))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    min_lrs: Sequence[float],
    frozen_steps: Sequence[int] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine to each group's floor; a group's lr is 0 while it is frozen.

    Stepped once per optimizer step. Freezing by lr 0 (rather than requires_grad) keeps the set of
    parameters with gradients constant, which DistributedDataParallel requires.
    """
    frozen_steps = list(frozen_steps or [0] * len(optimizer.param_groups))

    def factor_for(group_index: int, base_lr: float) -> Callable[[int], float]:
        floor = min(min_lrs[group_index] / base_lr, 1.0)

        def factor(step: int) -> float:
            if step < frozen_steps[group_index]:
                return 0.0
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return factor

    lambdas = [factor_for(i, group["lr"]) for i, group in enumerate(optimizer.param_groups)]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    device: torch.device,
    precision: Precision,
    accum_steps: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    channels_last: bool = False,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = True,
    description: str = "train",
) -> dict[str, float]:
    """One pass over `loader`; loss_fn(model, images, targets) -> (loss, logits) on un-normalised images.

    Gradients are accumulated over `accum_steps` batches (DDP syncs only on the last); `scheduler`
    steps once per optimizer step. Returns mean loss, accuracy, image count and throughput.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total_loss, correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    batches = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, total=batches, desc=description, leave=False, disable=not progress, unit="batch")
    for index, (images, targets) in enumerate(bar):
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        hard_targets = targets
        if batch_transform is not None:
            images, targets = batch_transform(images, targets)
        last_of_group = (index + 1) % accum_steps == 0 or (batches is not None and index + 1 == batches)
        sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast(device):
                loss, logits = loss_fn(model, images, targets)
            scaled = loss / accum_steps
            if precision.scaler is not None:
                precision.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        if last_of_group:
            if precision.scaler is not None:
                precision.scaler.step(optimizer)
                precision.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        count = hard_targets.shape[0]
        total_loss += float(loss.detach()) * count
        correct += int((logits.detach().argmax(dim=1) == hard_targets).sum())
        seen += count
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    seconds = time.perf_counter() - started
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else 0.0,
    }


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    channels_last: bool = False,
) -> bool:
    """Re-estimate BatchNorm running statistics over `loader` (like swa_utils.update_bn, but the
    training loader yields un-normalised images, so `prepare` normalises them). False if no BN."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = {}
    for module in norms:
        module.reset_running_stats()
        momenta[module] = module.momentum
        module.momentum = None  # cumulative average over the whole pass
    was_training = model.training
    model.train()
    for images, _ in loader:
        model(prepare(to_device(images, device, channels_last)))
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)
    return True
