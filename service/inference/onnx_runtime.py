"""ONNX Runtime: the default on CPU, several times faster than PyTorch eager there (docs/BENCHMARKS.md)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.inference.thread_policy import FastestVariant

__all__ = ["FEATURES_OUTPUT", "OnnxRuntime"]

FEATURES_OUTPUT = "features"  # model_training.export.bundle_export.ONNX_FEATURES


# Two sessions double the model's memory: worth it for a student (tens of MB), not for a teacher.
ADAPTIVE_SPINNING_MAX_BYTES = 256 * 1024 * 1024


def _session(onnx_path: Path, threads: int, spinning: bool, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One session runs one batch at a time on every core; parallel sessions would fight for them.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:
        # Spin between the operators of a forward, never after it: the decode threads and the event
        # loop need the cores between batches.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


class OnnxRuntime:
    name = "onnx"

    def __init__(
        self,
        onnx_path: Path,
        *,
        device: str = "cpu",
        threads: int = 1,
        spinning: str = "auto",
        precision: str = "fp32",
    ) -> None:
        """`precision`: "fp32" (model.onnx) or "int8" (model.int8.onnx, as the caller chose).
        `spinning`: "auto" (on CPU with several threads, serve with whichever of spinning and
        parked intra-op threads is faster now: service/inference/thread_policy.py), "on" or "off"."""
        if spinning not in ("auto", "on", "off"):
            raise ValueError(f"spinning must be auto, on or off, not {spinning!r}")
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        adaptive = (
            spinning == "auto"
            and device == "cpu"
            and threads > 1
            and Path(onnx_path).stat().st_size <= ADAPTIVE_SPINNING_MAX_BYTES
        )
        if adaptive:
            variants = {"parked": False, "spinning": True}
        else:
            # Without a measurement, park: spinning threads take the cores that decode threads and the
            # event loop need, which halved the service's throughput under load (docs/BENCHMARKS.md).
            variants = {"spinning": True} if spinning == "on" else {"parked": False}
        self._sessions = {
            name: _session(Path(onnx_path), threads, spin, providers) for name, spin in variants.items()
        }
        self.thread_policy = FastestVariant(tuple(self._sessions))
        self.session = next(iter(self._sessions.values()))
        self.device = device
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        # Bundles exported since the safety gate have a second output, the penultimate features.
        outputs = [output.name for output in self.session.get_outputs()]
        self.has_features = FEATURES_OUTPUT in outputs
        self._outputs = [self.output_name, FEATURES_OUTPUT] if self.has_features else [self.output_name]
        batch_axis = self.session.get_inputs()[0].shape[0]
        fixed_batch = batch_axis if isinstance(batch_axis, int) else None
        # Measured on CPU: batch 1 is faster per image than batch 8, so on CPU nothing is held back.
        self.batching_helps = device == "cuda"
        self.preferred_batch_size = fixed_batch or (32 if device == "cuda" else 1)
        self.max_batch_size = fixed_batch

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(batch)[0]

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.max_batch_size is not None and batch.shape[0] != self.max_batch_size:
            rows = [self.predict(row[None]) for row in batch]
            logits = np.concatenate([row[0] for row in rows])
            return logits, (np.concatenate([row[1] for row in rows]) if self.has_features else None)
        if len(self._sessions) == 1:
            outputs = self.session.run(self._outputs, {self.input_name: batch})
        else:
            variant = self.thread_policy.pick()
            began = time.perf_counter()
            outputs = self._sessions[variant].run(self._outputs, {self.input_name: batch})
            self.thread_policy.observe(variant, (time.perf_counter() - began) / max(1, batch.shape[0]))
        return outputs[0], (outputs[1] if self.has_features else None)
