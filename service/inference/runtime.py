"""The runtime contract and the choice between ONNX Runtime and PyTorch.

A runtime turns a float32 batch (N, 3, H, W) into float32 logits (N, classes) and, for bundles
exported with them, the penultimate features (N, d) the safety gate scores (kdoct/safety.py). Calls
come from one thread at a time (the batcher's), so a runtime holds one session and needs no locking.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

from kdoct.bundle import Bundle
from kdoct.errors import ConfigError

__all__ = ["Runtime", "build_runtime", "cpu_count", "keep_blas_to_one_thread"]

log = logging.getLogger(__name__)


class Runtime(Protocol):
    name: str  # "onnx" | "torch": the `runtime` label of the inference metrics
    device: str  # "cpu" | "cuda"
    precision: str
    # Largest batch worth running at once, and whether waiting for more requests pays off.
    preferred_batch_size: int
    batching_helps: bool

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, penultimate features or None when the model does not give them)."""

    def predict_logits(self, batch: np.ndarray) -> np.ndarray: ...


def keep_blas_to_one_thread() -> None:
    """numpy's OpenBLAS threads spin for a while after each product (the safety gate's OOD score,
    every request) on the very cores ONNX Runtime's threads need next: measured, the service's
    forward ran 1.3-1.6x slower than the same session in a plain loop, and 1.0-1.3x with one OpenBLAS
    thread (bench/answer_timing.py, docs/BENCHMARKS.md). Its products here are small: one thread does.
    Only OpenBLAS: a PyTorch runtime's own thread pool is the inference engine and is left alone."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_runtime(
    bundle: Bundle, runtime: str, device: str, precision: str = "fp32", threads: int | None = None
) -> Runtime:
    """The runtime that serves `bundle`; `runtime` and `device` are already resolved (not auto)."""
    if runtime == "onnx":
        if bundle.onnx_path is None:
            raise ConfigError(
                f"{bundle.path}: the bundle has no model.onnx, so KDOCT_RUNTIME=onnx cannot serve it: "
                f"re-export it, or set KDOCT_RUNTIME=torch"
            )
        from service.inference.onnx_runtime import OnnxRuntime

        if precision == "int8":
            if bundle.int8_onnx_path is None:
                raise ConfigError(
                    f"{bundle.path}: KDOCT_PRECISION=int8, but the bundle has no model.int8.onnx: add it "
                    f"with `python -m model_training export --from-bundle {bundle.path} --int8`, or use fp32"
                )
            if device != "cpu":
                raise ConfigError("KDOCT_PRECISION=int8 runs on ONNX Runtime on the CPU only")
            return OnnxRuntime(
                bundle.int8_onnx_path, device=device, threads=threads or cpu_count(), precision="int8"
            )
        return OnnxRuntime(bundle.onnx_path, device=device, threads=threads or cpu_count())
    if runtime == "torch":
        if precision == "int8":
            raise ConfigError("KDOCT_PRECISION=int8 is served by ONNX Runtime on the CPU, not PyTorch")
        from service.inference.torch_runtime import TorchRuntime

        return TorchRuntime(
            bundle.model(), device=device, precision=precision, threads=threads or cpu_count()
        )
    raise ConfigError(f"unknown runtime {runtime!r}: choose onnx or torch")
