"""Predictions and metrics of any bundle on any set of images, with the metric code `cv` uses."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdoct.bundle import Bundle, load_bundle
from kdoct.probabilities import softmax
from model_training.data.manifest import read_manifest
from model_training.engine import evaluate_logits
from model_training.fit import eval_loader
from model_training.metrics import compute_metrics, read_predictions, write_predictions

__all__ = ["evaluate_bundle", "predict_bundle"]

log = logging.getLogger(__name__)


def predict_bundle(
    bundle: Bundle,
    samples: Sequence,
    *,
    tta: bool = False,
    batch_size: int = 32,
    device: torch.device | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Calibrated probabilities (N, C) of the bundle's own weights on `samples`, through kdoct's eval
    transform with the bundle's preprocess spec and temperature: exactly what is shipped."""
    device = device or torch.device("cpu")
    model = bundle.model().to(device)
    loader = eval_loader(samples, bundle.class_names, bundle.preprocess, batch_size, num_workers)
    logits, _ = evaluate_logits(
        model, loader, device=device, tta=tta, progress=progress, description=f"predict {bundle.name}"
    )
    bundle.model().cpu()
    return softmax(logits, bundle.temperature)


def evaluate_bundle(
    bundle_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    tta: bool = False,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Write OUT/predictions.csv and OUT/metrics.json for the bundle on the manifest's images."""
    bundle = load_bundle(bundle_dir)
    samples = read_manifest(manifest, classes=bundle.class_names)
    probabilities = predict_bundle(bundle, samples, tta=tta, batch_size=batch_size, progress=True)
    out_dir = Path(out_dir)
    predictions = write_predictions(
        out_dir / "predictions.csv", samples, bundle.class_names, {"model": probabilities}
    )
    # Metrics are computed from the file just written, like cv's: one path from predictions to figures.
    saved = read_predictions(predictions, bundle.class_names)
    metrics = compute_metrics(saved["labels"], saved["models"]["model"], bundle.class_names)
    result = {
        "bundle": {
            "name": bundle.name,
            "version": bundle.version,
            "sha256": bundle.sha256,
            "path": str(bundle.path),
        },
        "manifest": str(manifest),
        "tta": tta,
        "metrics": metrics,
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
