"""Load a bundle for serving: verify it, build its runtime, warm it up, prove it on golden inputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdoct.bundle import Bundle, load_bundle
from kdoct.errors import BundleError, GoldenMismatchError
from kdoct.golden import (
    EXPECTED_NAME,
    GOLDEN_TOLERANCE,
    INT8_EXPECTED_NAME,
    INT8_SCORE_TOLERANCE,
    INT8_TOLERANCE,
    SCORE_TOLERANCE,
    check_golden,
)
from kdoct.preprocess import PreprocessSpec
from kdoct.safety import SafetyGate, load_gate
from service.inference.runtime import Runtime, build_runtime

__all__ = ["LoadedModel", "load_model"]

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    bundle: Bundle
    runtime: Runtime
    spec: PreprocessSpec
    golden_difference: float
    gate: SafetyGate | None = None  # the safety gate, when the service applies it to this model

    @property
    def role(self) -> str:
        return self.bundle.role

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.bundle.class_names

    @property
    def temperature(self) -> float:
        """The temperature of the model this runtime runs: INT8 logits have their own."""
        if self.runtime.precision == "int8":
            return self.bundle.int8_temperature
        return self.bundle.temperature

    def identity(self) -> dict[str, str]:
        return {"name": self.bundle.name, "version": self.bundle.version, "sha256": self.bundle.sha256}


def load_model(
    path: Path,
    *,
    expected_role: str,
    runtime: str,
    device: str,
    precision: str = "fp32",
    threads: int | None = None,
    reduced_precision_tolerance: float = 5e-3,
    reduced_precision_score_tolerance: float = 5e-2,
    warmup_batch: int | None = None,
    safety_gate: bool = False,
) -> LoadedModel:
    """Raises BundleError (GoldenMismatchError for a runtime that does not reproduce the bundle).
    `safety_gate`: load the bundle's safety gate (refused when it has none) and check it on the
    golden inputs too."""
    began = time.perf_counter()
    bundle = load_bundle(path)
    if bundle.role != expected_role:
        raise BundleError(
            f"{path}: this bundle's role is {bundle.role!r}, but it is configured as the {expected_role}: "
            f"check KDOCT_{expected_role.upper()}_BUNDLE"
        )
    if bundle.golden_dir is None:
        raise BundleError(
            f"{path}: the bundle has no golden/ inputs, so the service cannot prove it reproduces the model: "
            f"re-export it with model_training"
        )
    if safety_gate and load_gate(bundle.path, bundle.manifest["files"]) is None:
        raise BundleError(
            f"{path}: the bundle has no safety gate (safety/gate.json), and KDOCT_SAFETY_GATE=on: re-export "
            f"it with this version of model_training, or set KDOCT_SAFETY_GATE=off (research use only)"
        )
    spec = bundle.preprocess
    model_runtime = build_runtime(bundle, runtime, device, precision, threads)
    # The INT8 model's features have out-of-distribution statistics of their own (kdoct/safety.py).
    gate = load_gate(bundle.path, bundle.manifest["files"], model_runtime.precision) if safety_gate else None
    height, width = spec.input_size
    # Every batch shape the batcher can produce runs once here, so no live request pays for a
    # runtime's first-use work on a new shape (kernel selection, memory planning).
    warmup_sizes = getattr(model_runtime, "warmup_sizes", lambda rows: sorted({1, max(1, rows)}))
    for rows in warmup_sizes(warmup_batch or model_runtime.preferred_batch_size):
        model_runtime.predict_logits(np.zeros((rows, 3, height, width), dtype=np.float32))
    # fp32 and fp16/bf16 reproduce the fp32 golden outputs; INT8 is a different function, checked
    # against the outputs its own graph recorded at export (kdoct/golden.py).
    expected, tolerance, score_tolerance = {
        "fp32": (EXPECTED_NAME, GOLDEN_TOLERANCE, SCORE_TOLERANCE),
        "int8": (INT8_EXPECTED_NAME, INT8_TOLERANCE, INT8_SCORE_TOLERANCE),
    }.get(
        model_runtime.precision,
        (EXPECTED_NAME, reduced_precision_tolerance, reduced_precision_score_tolerance),
    )
    try:
        difference = check_golden(
            bundle.golden_dir,
            spec,
            model_runtime.predict,
            tolerance,
            gate=gate,
            score_tolerance=score_tolerance,
            expected_name=expected,
        )
    except GoldenMismatchError as exc:
        raise GoldenMismatchError(
            f"refusing to serve {bundle.name} {bundle.version} on "
            f"{model_runtime.name}/{model_runtime.device} ({model_runtime.precision}): {exc}"
        ) from None
    log.info(
        "loaded %s %s %s (%s) on %s/%s %s: golden max difference %.2e, %.1f s",
        expected_role, bundle.name, bundle.version, bundle.sha256[:12], model_runtime.name,
        model_runtime.device, model_runtime.precision, difference, time.perf_counter() - began,
    )  # fmt: skip
    return LoadedModel(
        bundle=bundle, runtime=model_runtime, spec=spec, golden_difference=difference, gate=gate
    )
