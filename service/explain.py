"""Grad-CAM explanations: where in the B-scan the model looked for a class.

Computed with the bundle's PyTorch weights (ONNX graphs carry no gradients), only when a caller asks,
never on the batched fast path. The heatmap is Grad-CAM (Selvaraju et al., 2017) on the network's last
spatial feature map: for EfficientNet the output of `conv_head` (+ bn2 and its activation), for
ConvNeXt(V2) the output of the last stage.

No forward hooks are registered: the model is split at timm's `forward_features` / `forward_head`
boundary, so a call mutates no shared module state and any number of threads may explain at once
with the same model. Only the lazy construction of the model is under a lock.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from kdoct.bundle import Bundle
from kdoct.preprocess import preprocess_array, to_gray

__all__ = [
    "OVERLAY_MAX_SIDE",
    "Explainer",
    "ExplainerBusy",
    "Explanation",
    "GradCam",
    "colorize",
    "overlay_heatmap",
    "target_layer_name",
]

# The overlay goes back inside a JSON answer as base64: 512 px on the long side keeps it well under
# 1 MB while staying sharper than the B-scans of the common datasets (512 x 496).
OVERLAY_MAX_SIDE = 512
# Low activations stay nearly transparent so the retina stays readable under the heatmap.
OVERLAY_MAX_ALPHA = 0.55

# Google's polynomial approximation of the Turbo colormap (Apache-2.0, Mikhailov 2019): perceptually
# smoother than jet, and computed with numpy alone so the service needs no matplotlib at run time.
_TURBO_RED = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_GREEN = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_BLUE = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def target_layer_name(model) -> str:
    """The module whose output Grad-CAM weighs, for the families kdoct serves."""
    if hasattr(model, "conv_head") and hasattr(model, "forward_features"):
        return "conv_head"
    stages = getattr(model, "stages", None)
    if stages is not None and len(stages) > 0:
        return f"stages.{len(stages) - 1}"
    raise ValueError(
        f"Grad-CAM supports timm EfficientNet and ConvNeXt models, not {type(model).__name__}: "
        f"add its target layer to service.explain.target_layer_name"
    )


def _turbo_table(levels: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, levels)
    powers = np.stack([x**k for k in range(6)], axis=-1)
    rgb = np.stack([powers @ np.asarray(c) for c in (_TURBO_RED, _TURBO_GREEN, _TURBO_BLUE)], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# A 256-entry lookup table: evaluating the polynomial per pixel costs ~17 ms for a 512 px overlay.
_TURBO_TABLE = _turbo_table()


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """A map in [0, 1] of shape (H, W) -> uint8 RGB (H, W, 3) in the Turbo colormap."""
    x = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    return _TURBO_TABLE[(x * 255.0 + 0.5).astype(np.intp)]


def _display_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _gray_uint8(image: Image.Image) -> Image.Image:
    gray = to_gray(image)
    if gray.mode == "F":  # 16-bit scans arrive as floats in [0, 1]
        gray = Image.fromarray((np.asarray(gray) * 255.0 + 0.5).astype(np.uint8), mode="L")
    return gray


def overlay_heatmap(image: Image.Image, heatmap: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """The heatmap, upsampled to the image, blended over the grayscale B-scan (RGB, long side <= max_side).

    The model saw the whole image resized (no crop), so stretching the map over the whole image lines
    it up with what the model saw.
    """
    size = _display_size(image.size, max_side)
    gray = np.asarray(_gray_uint8(image).resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    low_res = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    weights = np.clip(np.asarray(low_res.resize(size, Image.Resampling.BILINEAR)), 0.0, 1.0)
    colors = colorize(weights).astype(np.float32)
    alpha = (OVERLAY_MAX_ALPHA * weights)[..., None]
    blended = gray[..., None] * (1.0 - alpha) + colors * alpha
    return Image.fromarray((blended + 0.5).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class Explanation:
    """One Grad-CAM heatmap: the raw low-resolution map and its overlay on the B-scan."""

    class_index: int
    class_name: str
    target_layer: str
    heatmap: np.ndarray  # float32 (h, w) in [0, 1], the feature map's resolution
    overlay_png: bytes

    compute_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the API answers (the service keeps no images, so nothing of it is stored)."""
        return {
            "method": "grad-cam",
            "compute_ms": round(self.compute_ms, 3),
            "class_name": self.class_name,
            "target_layer": self.target_layer,
            "map": np.round(self.heatmap.astype(np.float64), 4).tolist(),
            "map_shape": list(self.heatmap.shape),
            "overlay_png_base64": base64.b64encode(self.overlay_png).decode("ascii"),
        }


class GradCam:
    """Grad-CAM for one bundle's PyTorch model. Thread-safe; build once and share."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.class_names = bundle.class_names
        self.spec = bundle.preprocess
        self._model = None
        self._model_lock = threading.Lock()

    @property
    def model(self):
        # Bundle.model() builds lazily without a lock; two threads must not build (and load) it twice.
        with self._model_lock:
            if self._model is None:
                import torch

                # channels_last halves the CPU cost of the backbone here (105 -> 58 ms for
                # efficientnet_b2 at 384 px); converting the shared model changes no value it computes.
                self._model = self.bundle.model().to(memory_format=torch.channels_last)
            return self._model

    @property
    def target_layer(self) -> str:
        return target_layer_name(self.model)

    def class_index(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise ValueError(f"class {class_name!r} is not one of {', '.join(self.class_names)}") from None

    def heatmaps(
        self, image: Image.Image, class_indices: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Grad-CAM maps (n, h, w) in [0, 1] for `class_indices` (default: the predicted class), the
        image's logits and the class indices, all from one forward pass."""
        import torch

        for index in class_indices or []:
            if not 0 <= index < len(self.class_names):
                raise ValueError(f"class index {index} is out of range for {len(self.class_names)} classes")
        model = self.model
        batch = torch.from_numpy(preprocess_array(image, self.spec)[None])
        # The torch runtime may have moved the shared model to CUDA: explain where the model lives.
        device = next(model.parameters()).device
        batch = batch.to(device).contiguous(memory_format=torch.channels_last)
        # Only the gradient of the class score with respect to the feature map is needed, so the
        # backbone runs without autograd and only the head is differentiated: far cheaper.
        with torch.no_grad():
            features = model.forward_features(batch)
        features = features.detach().requires_grad_(True)
        maps = []
        with torch.enable_grad():
            logits = model.forward_head(features)
            if class_indices is None:
                class_indices = [int(logits[0].argmax())]
            for position, index in enumerate(class_indices):
                last = position == len(class_indices) - 1
                (gradient,) = torch.autograd.grad(logits[0, index], features, retain_graph=not last)
                channel_weights = gradient[0].mean(dim=(1, 2))
                cam = torch.relu(torch.einsum("c,chw->hw", channel_weights, features[0].detach()))
                maps.append(_normalise(cam.cpu().numpy()))
        return np.stack(maps), logits.detach()[0].float().cpu().numpy(), class_indices

    def explain(self, image: Image.Image, class_index: int | None = None) -> Explanation:
        """The heatmap for `class_index` (default: the class the PyTorch model predicts)."""
        began = time.perf_counter()
        maps, _, (class_index,) = self.heatmaps(image, None if class_index is None else [class_index])
        heatmap = maps[0]
        buffer = io.BytesIO()
        # Level 1: a B-scan's speckle barely compresses, and level 6 costs 5x the time for 10 % less.
        overlay_heatmap(image, heatmap).save(buffer, format="PNG", compress_level=1)
        return Explanation(
            class_index=class_index,
            class_name=self.class_names[class_index],
            target_layer=self.target_layer,
            heatmap=heatmap,
            overlay_png=buffer.getvalue(),
            compute_ms=(time.perf_counter() - began) * 1000.0,
        )


class ExplainerBusy(Exception):
    """Too many explanations are waiting: the request should be retried later (503)."""


class Explainer:
    """The service's Grad-CAM: off the event loop and off the batched fast path.

    One worker thread runs explanations one at a time (each already uses every core through
    PyTorch), behind a bounded backlog: past `max_pending` waiting calls, `ExplainerBusy` is raised at
    once instead of queueing without bound. A `GradCam` is built per bundle on first use.
    """

    def __init__(self, max_pending: int = 4) -> None:
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdoct-explain")
        self._gradcams: dict[str, GradCam] = {}
        self._gradcams_lock = threading.Lock()
        self._pending = 0  # touched only on the event loop

    def gradcam(self, bundle: Bundle) -> GradCam:
        with self._gradcams_lock:
            if bundle.sha256 not in self._gradcams:
                self._gradcams[bundle.sha256] = GradCam(bundle)
            return self._gradcams[bundle.sha256]

    def _explain(self, bundle: Bundle, image: Image.Image, class_name: str) -> Explanation:
        gradcam = self.gradcam(bundle)
        return gradcam.explain(image, gradcam.class_index(class_name))

    async def explain(self, bundle: Bundle, image: Image.Image, class_name: str) -> Explanation:
        if self._pending >= self.max_pending:
            raise ExplainerBusy(
                f"{self._pending} explanations are waiting: retry shortly, or ask without explain=true"
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._explain, bundle, image, class_name)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _normalise(cam: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]. A map with no positive evidence anywhere stays all zero rather than noise."""
    cam = np.asarray(cam, dtype=np.float32)
    low, high = float(cam.min()), float(cam.max())
    if not high > low:
        return np.zeros_like(cam)
    return ((cam - low) / (high - low)).astype(np.float32)
