"""PyTorch: the runtime on CUDA (channels_last, optional fp16/bf16 autocast), or on CPU for checks."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TorchRuntime"]

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRuntime:
    name = "torch"

    def __init__(
        self, model: torch.nn.Module, *, device: str = "cpu", precision: str = "fp32", threads: int = 1
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TorchRuntime on cuda, but PyTorch sees no CUDA device")
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = device
        self.precision = precision if device == "cuda" else "fp32"
        self.model = model.eval().to(device)
        if device == "cuda" and self.precision == "fp32":
            # TF32 (on by default for cuDNN convolutions) is not fp32: the golden check against the ONNX
            # fp32 outputs must compare like with like. Measured numbers are in docs/CONFIGURATION.md.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batching_helps = device == "cuda"
        self.preferred_batch_size = 32 if device == "cuda" else 1

    @torch.inference_mode()
    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(batch)
        if self.device == "cuda":
            inputs = (
                inputs.pin_memory()
                .to("cuda", non_blocking=True)
                .contiguous(memory_format=torch.channels_last)
            )
        if self.precision in _DTYPES:
            with torch.autocast(device_type="cuda", dtype=_DTYPES[self.precision]):
                logits = self.model(inputs)
        else:
            logits = self.model(inputs)
        return logits.float().cpu().numpy()
