"""ONNX Runtime: the default on CPU, several times faster than PyTorch eager there (REFERENCE.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["OnnxRuntime"]


class OnnxRuntime:
    name = "onnx"

    def __init__(self, onnx_path: Path, *, device: str = "cpu", threads: int = 1) -> None:
        options = ort.SessionOptions()
        # One session runs one batch at a time on every core; parallel sessions would fight for them.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle ORT threads spin by default, taking the cores that decode threads and the event loop need
        # between batches: with spinning off the service served 1.6-1.9x more images/s and halved its
        # p50 on the 2-core machine (docs/BENCHMARKS.md, "Profile").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.device = device
        self.precision = "fp32"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        batch_axis = self.session.get_inputs()[0].shape[0]
        fixed_batch = batch_axis if isinstance(batch_axis, int) else None
        # Measured on CPU: batch 1 is faster per image than batch 8, so on CPU nothing is held back.
        self.batching_helps = device == "cuda"
        self.preferred_batch_size = fixed_batch or (32 if device == "cuda" else 1)
        self.max_batch_size = fixed_batch

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.max_batch_size is not None and batch.shape[0] != self.max_batch_size:
            return np.concatenate([self.predict_logits(row[None]) for row in batch])
        return self.session.run([self.output_name], {self.input_name: batch})[0]
