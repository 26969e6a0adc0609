"""Seeded training augmentation, in a normalisation-free space.

`TrainAugment(image, rng)` turns a B-scan into a float tensor (3, H, W) in [0, 1]; every random draw
comes from the numpy Generator passed in, so the same seed gives the same tensor (the dataset seeds
one Generator per (seed, epoch, sample)). Normalisation happens later, per model (`normalise`), so
the teacher and the student of a distillation step see the same augmented pixels, each with its own
mean/std. The grayscale reduction is kdoct.preprocess's, so training and serving agree on channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from kdoct.preprocess import PreprocessSpec, to_gray
from model_training.config import AugmentConfig

__all__ = ["TrainAugment", "image_to_unit_tensor", "mix_batch", "normalise"]

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def image_to_unit_tensor(image: Image.Image, channel_mode: str) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [0, 1]; C = 1 for gray3 (expanded later), 3 for rgb."""
    if channel_mode == "gray3":
        gray = to_gray(image)
        plane = np.array(gray, dtype=np.float32)  # a writable copy: torch refuses read-only buffers
        if gray.mode == "L":
            plane /= 255.0
        return torch.from_numpy(plane)[None]
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def normalise(batch: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(x - mean) / std per channel, for a batch (N, 3, H, W) in [0, 1]; resized if the spec differs."""
    height, width = spec.input_size
    if batch.shape[-2:] != (height, width):
        batch = torch.nn.functional.interpolate(
            batch, size=(height, width), mode=spec.interpolation, align_corners=False, antialias=True
        )
    mean = torch.tensor(spec.mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


class TrainAugment:
    """The KD-OCT training augmentation (the paper's, docs/TRAINING.md), parameterised by AugmentConfig."""

    def __init__(self, config: AugmentConfig, spec: PreprocessSpec):
        self.config = config
        self.spec = spec
        self.interpolation = _INTERPOLATION[spec.interpolation]
        # torchvision's affine warp of a tensor knows nearest and bilinear only; the resize to the input
        # size (what the model's own interpolation is about) keeps the spec's.
        self.warp_interpolation = InterpolationMode.BILINEAR

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config
        height, width = self.spec.input_size
        x = image_to_unit_tensor(image, self.spec.channel_mode)
        # Resize a little larger than the input, then crop: a small random translation and zoom.
        big = (round(height * cfg.resize_ratio), round(width * cfg.resize_ratio))
        x = TF.resize(x, list(big), interpolation=self.interpolation, antialias=True)
        top = int(rng.integers(0, big[0] - height + 1))
        left = int(rng.integers(0, big[1] - width + 1))
        x = x[:, top : top + height, left : left + width]
        x = self._photometric_and_geometric(x, rng)
        if rng.random() < cfg.hflip:
            x = TF.horizontal_flip(x)
        if rng.random() < cfg.vflip:
            x = TF.vertical_flip(x)
        if rng.random() < cfg.blur_p:
            sigma = float(rng.uniform(0.1, 2.0))
            x = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[sigma, sigma])
        if rng.random() < cfg.posterize_p:
            levels = 2**cfg.posterize_bits
            x = torch.floor(x * (levels - 1e-6)) / (levels - 1)
        if rng.random() < cfg.erasing_p:
            x = self._erase(x, rng)
        x = x.clamp_(0.0, 1.0)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x.contiguous()

    def _photometric_and_geometric(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config
        height, width = x.shape[-2:]
        # RandAugment-like: `randaug_ops` distinct ops. Photometric ops move by up to `randaug_magnitude`;
        # rotate/translate by up to randaug_rotate degrees / randaug_translate of the image size.
        ops = ["brightness", "contrast", "sharpness", "rotate", "translate"]
        chosen = set(rng.choice(ops, size=min(cfg.randaug_ops, len(ops)), replace=False).tolist())
        draws = {op: float(rng.uniform(-1.0, 1.0)) for op in [*ops, "translate_y"]}
        # Geometry is composed into one affine warp: one interpolation instead of three.
        angle = float(rng.uniform(-cfg.rotation, cfg.rotation))
        if "rotate" in chosen:
            angle += draws["rotate"] * cfg.randaug_rotate
        shift = [0, 0]
        if "translate" in chosen:
            shift = [
                round(draws["translate"] * cfg.randaug_translate * width),
                round(draws["translate_y"] * cfg.randaug_translate * height),
            ]
        shear = float(rng.uniform(-cfg.shear, cfg.shear))
        scale = float(rng.uniform(*cfg.scale))
        x = TF.affine(
            x,
            angle=angle,
            translate=shift,
            scale=scale,
            shear=[shear, 0.0],
            interpolation=self.warp_interpolation,
        )
        magnitude = cfg.randaug_magnitude
        if "brightness" in chosen:
            x = TF.adjust_brightness(x, max(0.0, 1.0 + magnitude * draws["brightness"]))
        if "contrast" in chosen:
            x = _adjust_contrast(x, max(0.0, 1.0 + magnitude * draws["contrast"]))
        if "sharpness" in chosen:
            x = TF.adjust_sharpness(x, max(0.0, 1.0 + magnitude * draws["sharpness"]))
        # ColorJitter(brightness, contrast, saturation): saturation only means something for RGB.
        if cfg.brightness:
            x = TF.adjust_brightness(x, float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)))
        if cfg.contrast:
            x = _adjust_contrast(x, float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)))
        if cfg.saturation and x.shape[0] == 3:
            x = TF.adjust_saturation(x, float(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)))
        return x

    def _erase(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        height, width = x.shape[-2:]
        area = height * width * float(rng.uniform(*self.config.erasing_scale))
        aspect = math.exp(float(rng.uniform(math.log(0.3), math.log(3.3))))
        erase_h = min(height, max(1, round(math.sqrt(area * aspect))))
        erase_w = min(width, max(1, round(math.sqrt(area / aspect))))
        top = int(rng.integers(0, height - erase_h + 1))
        left = int(rng.integers(0, width - erase_w + 1))
        x = x.clone()
        # The image's mean, not 0: in this un-normalised space 0 would be a black box, not "nothing".
        x[:, top : top + erase_h, left : left + erase_w] = x.mean()
        return x


def _adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    # torchvision's adjust_contrast wants 1 or 3 channels and blends with the mean luminance: same here.
    mean = x.mean()
    return (mean + factor * (x - mean)).clamp(0.0, 1.0)


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (one of them, 50/50 when both are on): mixed images and soft targets."""
    one_hot = torch.nn.functional.one_hot(targets.long(), num_classes).float()
    permutation = torch.from_numpy(generator.permutation(images.shape[0])).to(images.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or generator.random() < 0.5)
    if use_cutmix:
        lam = float(generator.beta(cutmix_alpha, cutmix_alpha))
        height, width = images.shape[-2:]
        cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
        cy, cx = int(generator.integers(0, height)), int(generator.integers(0, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[:, :, top:bottom, left:right] = images[permutation, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        lam = float(generator.beta(mixup_alpha, mixup_alpha))
        images = lam * images + (1 - lam) * images[permutation]
    return images, lam * one_hot + (1 - lam) * one_hot[permutation]
