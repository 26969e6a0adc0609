"""Export a trained model as a verified bundle: weights, ONNX (dynamic batch), golden outputs and,
when one was fitted, the safety gate (kdoct/safety.py).

The ONNX graph has two outputs, the logits and the penultimate features the safety gate scores. It
is checked against PyTorch on the golden images (real B-scans from the fold's validation data) before
the bundle is written; the measured difference is stored in bundle.json. With a gate, the golden set
also holds two inputs the gate must refuse (a black frame, noise), and every golden input's verdict
and out-of-distribution score, from the ONNX features, is recorded for the service to reproduce.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from kdoct.bundle import ONNX_NAME, Bundle, save_bundle
from kdoct.errors import BundleError
from kdoct.golden import GOLDEN_TOLERANCE, gate_probes, golden_files
from kdoct.models import LogitsAndFeatures
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.probabilities import softmax
from kdoct.safety import SafetyGate

__all__ = ["ONNX_FEATURES", "ONNX_INPUT", "ONNX_OUTPUT", "code_version", "export_bundle", "export_onnx"]

log = logging.getLogger(__name__)

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
ONNX_FEATURES = "features"


def code_version() -> str:
    """The git commit of this checkout (with '+dirty' when it has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_onnx(model: torch.nn.Module, path: Path, input_size: tuple[int, int]) -> None:
    """Export `model` (fp32, eval) to ONNX with a dynamic batch axis and a fixed image size; outputs
    ONNX_OUTPUT (logits) and ONNX_FEATURES (penultimate features)."""
    height, width = input_size
    example = torch.zeros(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        LogitsAndFeatures(model).eval(),
        (example,),
        str(path),
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT, ONNX_FEATURES],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def _onnx_outputs(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, features = session.run([ONNX_OUTPUT, ONNX_FEATURES], {ONNX_INPUT: batch})
    return logits, features


def export_bundle(
    model: torch.nn.Module,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    role: str,
    arch: str,
    class_names: Sequence[str],
    preprocess: PreprocessSpec,
    golden_images: Sequence[Image.Image],
    calibration: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    safety: SafetyGate | None = None,
) -> Bundle:
    """Write a complete, verified bundle to `out_dir` and return it loaded; `safety`: the gate fitted
    for this model (model_training/export/safety_fit.py), or None for a bundle without one."""
    if not golden_images:
        raise BundleError("export needs at least one golden image (a real B-scan) to verify the ONNX graph")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} is not empty: export into a new directory")
    model = model.float().cpu().eval()
    golden_images = list(golden_images) + (gate_probes() if safety is not None else [])
    batch = preprocess_batch(golden_images, preprocess)
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    torch_probabilities = softmax(torch_logits)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / ONNX_NAME
        export_onnx(model, onnx_path, preprocess.input_size)
        onnx_logits, onnx_features = _onnx_outputs(onnx_path, batch)
        onnx_probabilities = softmax(onnx_logits)
        difference = float(np.abs(onnx_probabilities - torch_probabilities).max())
        if not difference <= GOLDEN_TOLERANCE:
            raise BundleError(
                f"ONNX export of {arch} disagrees with PyTorch by {difference:.2e} on the golden images "
                f"(> {GOLDEN_TOLERANCE:.0e}); the bundle was not written"
            )
        log.info("ONNX export of %s matches PyTorch within %.2e", arch, difference)
        files = {ONNX_NAME: onnx_path.read_bytes()}
    # Golden expectations are the ONNX outputs: the default serving runtime must reproduce them
    # exactly, and PyTorch is already known to be within `difference` of them.
    verdicts = None
    if safety is not None:
        verdicts = safety.verdicts([safety.quality_reason(image) for image in golden_images], onnx_features)
        first_probe = len(golden_images) - len(gate_probes())
        passed = [i for i, v in enumerate(verdicts) if v.gradable and i >= first_probe]
        if passed:
            raise BundleError(
                f"the fitted safety gate grades a black frame or noise (probe(s) {passed}): the bundle was "
                f"not written; check the training images the gate was fitted on"
            )
        files.update(safety.files())
    files.update(golden_files(golden_images, onnx_probabilities, verdicts))
    manifest = {
        "name": name,
        "version": version,
        "role": role,
        "arch": arch,
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "calibration": dict(calibration or {"temperature": 1.0}),
        "metrics": dict(metrics or {}),
        "provenance": {"code_version": code_version(), **dict(provenance or {})},
        "onnx_check": {"max_abs_diff_probabilities": difference, "images": len(golden_images)},
    }
    return save_bundle(out_dir, model, manifest, extra_files=files)
