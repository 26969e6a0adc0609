"""Every reported figure, computed from saved predictions (predictions.csv) by this one module.

Used by `cv` (per fold and mean ± std) and by `evaluate`. Nothing is typed by hand.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from kdoct.errors import DataError
from model_training.evaluation.calibration import expected_calibration_error

__all__ = [
    "METRIC_KEYS",
    "aggregate",
    "compute_metrics",
    "read_predictions",
    "write_predictions",
]

METRIC_KEYS = ("accuracy", "macro_f1", "macro_sensitivity", "macro_specificity", "auc", "ece")
BASE_COLUMNS = ("path", "patient_id", "label")


def _safe_divide(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def compute_metrics(
    labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """accuracy, macro F1/sensitivity/specificity, one-vs-rest macro AUC, ECE, per-class figures and
    the confusion matrix (rows = true class, columns = predicted)."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    total = matrix.sum()
    per_class = {}
    for index, name in enumerate(class_names):
        tp = matrix[index, index]
        fn = matrix[index].sum() - tp
        fp = matrix[:, index].sum() - tp
        tn = total - tp - fn - fp
        sensitivity = _safe_divide(tp, tp + fn)
        precision = _safe_divide(tp, tp + fp)
        per_class[name] = {
            "sensitivity": sensitivity,
            "specificity": _safe_divide(tn, tn + fp),
            "precision": precision,
            "f1": _safe_divide(2 * precision * sensitivity, precision + sensitivity),
            "support": int(tp + fn),
        }
    present = [i for i in classes if (labels == i).any()]
    auc: float | None
    if len(present) == len(classes):
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=classes))
    elif len(present) == 2 and len(classes) == 2:
        auc = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        auc = None  # a class absent from this set: one-vs-rest AUC is undefined for it
    return {
        "n": int(total),
        "accuracy": _safe_divide(np.trace(matrix), total),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "macro_sensitivity": float(np.mean([c["sensitivity"] for c in per_class.values()])),
        "macro_specificity": float(np.mean([c["specificity"] for c in per_class.values()])),
        "auc": auc,
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def aggregate(fold_metrics: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """{'folds': [...], 'mean': {...}, 'std': {...}} over folds.

    std is the sample standard deviation (ddof=1); None (undefined) for a single fold."""

    def stats(values: list[float | None]) -> tuple[float | None, float | None]:
        present = [v for v in values if v is not None]
        if not present:
            return None, None
        std = float(np.std(present, ddof=1)) if len(present) > 1 else None
        return float(np.mean(present)), std

    mean: dict[str, Any] = {"per_class": {}}
    std: dict[str, Any] = {"per_class": {}}
    for key in METRIC_KEYS:
        mean[key], std[key] = stats([m[key] for m in fold_metrics])
    for name in class_names:
        mean["per_class"][name], std["per_class"][name] = {}, {}
        for key in ("sensitivity", "specificity", "precision", "f1"):
            m, s = stats([fm["per_class"][name][key] for fm in fold_metrics])
            mean["per_class"][name][key], std["per_class"][name][key] = m, s
    return {"folds": list(fold_metrics), "mean": mean, "std": std}


def write_predictions(
    path: Path,
    samples: Sequence,
    class_names: Sequence[str],
    probabilities_by_model: Mapping[str, np.ndarray],
) -> Path:
    """One row per image: path, patient_id, label, then `<model>_<class>` probabilities."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [*BASE_COLUMNS] + [f"{model}_{c}" for model in probabilities_by_model for c in class_names]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row, sample in enumerate(samples):
            values = [sample.path, sample.patient_id, sample.label]
            for probabilities in probabilities_by_model.values():
                values += [f"{p:.8f}" for p in probabilities[row]]
            writer.writerow(values)
    return path


def read_predictions(path: Path, class_names: Sequence[str]) -> dict[str, Any]:
    """{'rows': [...base columns...], 'labels': int array, 'models': {model: probabilities (N, C)}}."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DataError(f"cannot read predictions {path}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} holds no predictions")
    index = {name: i for i, name in enumerate(class_names)}
    try:
        labels = np.array([index[row["label"]] for row in rows], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: label {exc} is not one of {list(class_names)}") from exc
    suffix = f"_{class_names[0]}"
    models = [c[: -len(suffix)] for c in rows[0] if c.endswith(suffix) and c not in BASE_COLUMNS]
    probabilities = {
        model: np.array([[float(row[f"{model}_{c}"]) for c in class_names] for row in rows])
        for model in models
    }
    base = [{key: row[key] for key in BASE_COLUMNS} for row in rows]
    return {"rows": base, "labels": labels, "models": probabilities}
