"""PyTorch: the runtime on CUDA (channels_last, optional fp16/bf16 autocast), or on CPU for checks.

On CUDA every batch is padded to the next power of two (1, 2, 4, … 1024 rows). Each new input shape
costs cuDNN a one-off kernel selection (and, for some fused engines, compilation) that took about
2 s per shape on an H200: with micro-batching every batch size from 1 to 32 would pay it once, on a
live request. With padding there are only a few shapes, all of them warmed up before the service
reports ready (see `warmup_sizes`); the padded rows cost far less than a stall.
"""

from __future__ import annotations

import numpy as np
import torch

from kdoct.models import LogitsAndFeatures

__all__ = ["TorchRuntime", "padded_size"]

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_LARGEST_BUCKET = 1024


def padded_size(rows: int) -> int:
    """The power of two a batch of `rows` is padded to (rows itself above the largest bucket)."""
    if rows > _LARGEST_BUCKET:
        return rows
    return 1 << max(0, rows - 1).bit_length()


class TorchRuntime:
    name = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int = 1,
        pad_batches: bool | None = None,
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("TorchRuntime on cuda, but PyTorch sees no CUDA device")
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = device
        self.precision = precision if device == "cuda" else "fp32"
        # Wrapped so that one forward gives the logits and the safety gate's features.
        self.model = LogitsAndFeatures(model).eval().to(device)
        self.has_features = True
        if device == "cuda" and self.precision == "fp32":
            # TF32 (on by default for cuDNN convolutions) is not fp32: the golden check against the ONNX
            # fp32 outputs must compare like with like. Measured numbers are in docs/CONFIGURATION.md.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pad_batches = device == "cuda" if pad_batches is None else pad_batches
        self.batching_helps = device == "cuda"
        self.preferred_batch_size = 32 if device == "cuda" else 1

    def warmup_sizes(self, max_rows: int) -> list[int]:
        """Every batch shape a batch of up to `max_rows` rows runs as: run each once before serving."""
        if not self.pad_batches:
            return sorted({1, max(1, max_rows)})
        return [1 << power for power in range(padded_size(max(1, max_rows)).bit_length())]

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(batch)[0]

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = batch.shape[0]
        inputs = torch.from_numpy(batch)
        if self.pad_batches and padded_size(rows) > rows:
            inputs = torch.cat([inputs, inputs.new_zeros((padded_size(rows) - rows, *inputs.shape[1:]))])
        if self.device == "cuda":
            inputs = (
                inputs.pin_memory()
                .to("cuda", non_blocking=True)
                .contiguous(memory_format=torch.channels_last)
            )
        if self.precision in _DTYPES:
            with torch.autocast(device_type="cuda", dtype=_DTYPES[self.precision]):
                logits, features = self.model(inputs)
        else:
            logits, features = self.model(inputs)
        return logits[:rows].float().cpu().numpy(), features[:rows].float().cpu().numpy()
