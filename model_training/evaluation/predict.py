"""How a model predicts: logits over a loader of normalised images (with KD-OCT's test-time
augmentation), and a bundle's calibrated probabilities on samples, exactly as it is shipped. Training
validates with these, `cv` and `evaluate` predict with them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from tqdm import tqdm

from kdoct.bundle import Bundle
from kdoct.probabilities import softmax
from model_training.data.dataset import eval_loader

__all__ = ["Autocast", "evaluate_logits", "predict_bundle", "to_device", "tta_views"]


class Autocast(Protocol):
    """What evaluate_logits needs of a precision: training's Precision (train/engine.py) is one."""

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager: ...


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


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
    precision: Autocast | None = None,
    tta: bool = False,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "eval",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) float64 and targets (N,) of a loader of normalised images, in loader order;
    autocast by `precision` (training's Precision, for validation under AMP) when given, else fp32.

    With TTA, the logits returned are log(mean of the 5 views' softmax): averaging probabilities,
    expressed as logits so that temperature scaling and softmax still apply.
    """
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch"):
        images = to_device(images, device, channels_last)
        with precision.autocast(device) if precision is not None else contextlib.nullcontext():
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


def predict_bundle(
    bundle: Bundle,
    samples: Sequence,
    *,
    tta: bool = False,
    batch_size: int = 32,
    device: torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Calibrated probabilities (N, C) of the bundle's own weights on `samples`, through kdoct's eval
    transform with the bundle's preprocess spec and temperature: exactly what is shipped."""
    device = device or torch.device("cpu")
    model = bundle.model().to(device)
    loader = eval_loader(samples, bundle.class_names, bundle.preprocess, batch_size, num_workers)
    logits, _ = evaluate_logits(
        model, loader, device=device, tta=tta, progress=progress, description=f"predict {bundle.name}"
    )
    bundle.model().cpu()
    return softmax(logits, bundle.temperature)
