"""Metrics of any bundle on any manifest (`evaluate`), with the prediction and metric code `cv` uses."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kdoct.bundle import load_bundle
from model_training.data.manifest import read_manifest
from model_training.evaluation.classification_metrics import (
    compute_metrics,
    read_predictions,
    write_predictions,
)
from model_training.evaluation.predict import predict_bundle

__all__ = ["evaluate_bundle"]

log = logging.getLogger(__name__)


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
