"""The training and evaluation steps as plain functions: one epoch, evaluation (with optional TTA),
the learning-rate schedule, mixed precision, and BatchNorm re-estimation for SWA."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from tqdm import tqdm

__all__ = [
    "Precision",
    "evaluate_logits",
    "make_precision",
    "recompute_batchnorm",
    "train_one_epoch",
    "tta_views",
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


def _to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


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
        images = _to_device(images, device, channels_last)
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


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """KD-OCT's 5 test-time views: original, hflip, vflip, 1.1x zoom + centre crop, small rotation."""
    height, width = images.shape[-2:]
    zoomed = torch.nn.functional.interpolate(
        images, scale_factor=1.1, mode="bilinear", align_corners=False, antialias=True
    )
    zoomed = TF.center_crop(zoomed, [height, width])
    rotated = TF.rotate(images, angle=5.0, interpolation=TF.InterpolationMode.BILINEAR)
    return [images, TF.horizontal_flip(images), TF.vertical_flip(images), zoomed, rotated]


@torch.inference_mode()
def evaluate_logits(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    precision: Precision | None = None,
    tta: bool = False,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "eval",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) float64 and targets (N,) of a loader of normalised images, in loader order.

    With TTA, the logits returned are log(mean of the 5 views' softmax): averaging probabilities,
    expressed as logits so that temperature scaling and softmax still apply.
    """
    model.eval()
    precision = precision or Precision(None, None)
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch"):
        images = _to_device(images, device, channels_last)
        with precision.autocast(device):
            if tta:
                probabilities = torch.stack(
                    [model(view).float().softmax(dim=1) for view in tta_views(images)]
                )
                logits = probabilities.mean(dim=0).clamp_min(1e-12).log()
            else:
                logits = model(images).float()
        all_logits.append(logits.double().cpu().numpy())
        all_targets.append(np.asarray(targets))
    if not all_logits:
        return np.zeros((0, 0)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(all_logits), np.concatenate(all_targets).astype(np.int64)


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
        model(prepare(_to_device(images, device, channels_last)))
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)
    return True
