"""The one eval transform: an OCT B-scan image -> a normalised float tensor (3, H, W).

Training evaluation and the service both call `preprocess_array` (or `eval_transform`, its torch
wrapper), so a model is always served with exactly the pixels it was evaluated on. The spec travels
inside the model bundle; nothing here is re-typed in settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from kdoct.errors import PreprocessError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessSpec",
    "eval_transform",
    "preprocess_array",
    "preprocess_batch",
    "to_gray",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input. `input_size` is (height, width)."""

    input_size: tuple[int, int] = (384, 384)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # OCT is grayscale: "gray3" reduces any input to luminance and repeats it on 3 channels, so an
    # RGB export of a grayscale scan and the grayscale original give the same tensor.
    channel_mode: Literal["gray3", "rgb"] = "gray3"
    _scale: np.ndarray = field(init=False, repr=False, compare=False)
    _shift: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 8:
            raise PreprocessError(
                f"input_size must be (height, width) of at least 8 px, got {self.input_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise PreprocessError(f"mean and std need 3 values with std > 0, got {self.mean}, {self.std}")
        if self.interpolation not in _RESAMPLE:
            raise PreprocessError(
                f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        if self.channel_mode not in ("gray3", "rgb"):
            raise PreprocessError(f"channel_mode must be 'gray3' or 'rgb', got {self.channel_mode!r}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        # (x - mean) / std == x * scale + shift, precomputed once for the hot path.
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        object.__setattr__(self, "_scale", (1.0 / std).astype(np.float32))
        object.__setattr__(self, "_shift", (-mean / std).astype(np.float32))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_scale")
        data.pop("_shift")
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {"input_size", "mean", "std", "interpolation", "channel_mode"}
        unknown = set(data) - known
        if unknown:
            raise PreprocessError(f"unknown preprocess fields {sorted(unknown)}; expected {sorted(known)}")
        kwargs = dict(data)
        if "input_size" in kwargs:
            size = kwargs["input_size"]
            kwargs["input_size"] = (size, size) if isinstance(size, int) else tuple(size)
        return cls(**kwargs)


def to_gray(image: Image.Image) -> Image.Image:
    """Reduce any supported image to 8-bit 'L' or, for 16-bit and float input, 'F' scaled to [0, 1]."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit scans keep their full depth: scale to [0, 1] in float rather than truncating to 8 bits.
        array = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(array, 0.0, 65535.0) / 65535.0, mode="F")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), mode="F")
    if mode in ("1", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"):
        if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        return image.convert("L")
    raise PreprocessError(f"unsupported image mode {mode!r}")


def _to_rgb_float(image: Image.Image) -> Image.Image | np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        gray = to_gray(image)
        return np.repeat(np.asarray(gray, dtype=np.float32)[None], 3, axis=0)
    return image.convert("RGB")


def preprocess_array(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The eval transform as numpy: float32 array (3, H, W), normalised. Deterministic."""
    height, width = spec.input_size
    resample = _RESAMPLE[spec.interpolation]
    if spec.channel_mode == "gray3":
        gray = to_gray(image)
        if gray.size != (width, height):
            gray = gray.resize((width, height), resample)
        plane = np.asarray(gray, dtype=np.float32)
        scale = spec._scale * np.float32(1.0 / 255.0) if gray.mode == "L" else spec._scale
        # Straight into the output, the 8-bit range folded into the scale: no broadcast copy and no
        # temporaries (this runs once per request in the service; 2.0 -> 0.8 ms at 384 px).
        out = np.empty((3, height, width), dtype=np.float32)
        np.multiply(plane, scale, out=out)
        out += spec._shift
        return out
    else:
        rgb = _to_rgb_float(image)
        if isinstance(rgb, np.ndarray):
            planes = [
                np.asarray(Image.fromarray(c, mode="F").resize((width, height), resample), dtype=np.float32)
                for c in rgb
            ]
            chw = np.stack(planes)
        else:
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), resample)
            chw = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(chw * spec._scale + spec._shift, dtype=np.float32)


def preprocess_batch(images: list[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """Several images -> float32 array (N, 3, H, W)."""
    return np.stack([preprocess_array(image, spec) for image in images])


def eval_transform(spec: PreprocessSpec):
    """The eval transform as a callable image -> torch.FloatTensor (3, H, W), for datasets."""
    import torch  # deferred: only training's datasets need torch; the ONNX service runs without it

    def transform(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(preprocess_array(image, spec))

    return transform
