"""The cross-validation report: report.json, report.md (the paper's mean ± std table) and figures,
all computed from the folds' predictions.csv files through model_training.metrics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_training.metrics import aggregate, compute_metrics, read_predictions

__all__ = ["build_report", "count_parameters"]

MODEL_TITLES = {"teacher": "Teacher", "student": "Student (KD)", "student_no_kd": "Student (no KD)"}


def count_parameters(bundle_dir: Path) -> int | None:
    from safetensors import safe_open

    weights = Path(bundle_dir) / "model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as handle:
        # Parameters only: BatchNorm running statistics and counters are buffers, not parameters.
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        names = [n for n in handle.keys() if not n.endswith(buffers)]  # noqa: SIM118 - safe_open has no __iter__
        return int(sum(int(np.prod(handle.get_slice(n).get_shape())) for n in names))


def _percent(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    if std is None:  # one fold: a spread is undefined, and "± 0.00" would claim one
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), value in np.ndenumerate(matrix):
        axis.text(
            column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black"
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_roc(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], title: str, path: Path
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    for index, name in enumerate(class_names):
        positives = labels == index
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, probabilities[:, index])
        axis.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def build_report(
    out_dir: Path, folds: Sequence[int], class_names: Sequence[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read DIR/fold_K/predictions.csv for every fold, write report.json, report.md and PNGs."""
    out_dir = Path(out_dir)
    per_model: dict[str, list[dict[str, Any]]] = {}
    pooled: dict[str, tuple[list, list]] = {}
    for fold in folds:
        saved = read_predictions(out_dir / f"fold_{fold}" / "predictions.csv", class_names)
        for model, probabilities in saved["models"].items():
            metrics = compute_metrics(saved["labels"], probabilities, class_names)
            per_model.setdefault(model, []).append({"fold": fold, **metrics})
            pooled.setdefault(model, ([], []))
            pooled[model][0].append(saved["labels"])
            pooled[model][1].append(probabilities)
    report: dict[str, Any] = {"class_names": list(class_names), **(extra or {})}
    for model, fold_metrics in per_model.items():
        report[model] = aggregate(fold_metrics, class_names)
        report[model]["parameters"] = count_parameters(out_dir / f"fold_{folds[0]}" / model)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    figures = []
    for model, (labels, probabilities) in pooled.items():
        labels_all, probabilities_all = np.concatenate(labels), np.concatenate(probabilities)
        title = f"{MODEL_TITLES.get(model, model)}, {len(folds)} folds pooled"
        matrix = np.array(compute_metrics(labels_all, probabilities_all, class_names)["confusion_matrix"])
        _plot_confusion(matrix, class_names, title, out_dir / f"confusion_{model}.png")
        _plot_roc(labels_all, probabilities_all, class_names, title, out_dir / f"roc_{model}.png")
        figures += [f"confusion_{model}.png", f"roc_{model}.png"]
    (out_dir / "report.md").write_text(_markdown(report, per_model, class_names, folds, figures))
    return report


def _markdown(report, per_model, class_names, folds, figures) -> str:
    lines = [
        f"# Cross-validation report ({len(folds)} of the folds, held-out test patients only)",
        "",
        "Mean ± sample std over folds (no ± for a single fold), in %. Every figure is computed from the "
        "folds' predictions.csv.",
        "",
        "| model | accuracy | sensitivity | specificity | macro F1 | AUC | ECE | params (M) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in per_model:
        mean, std = report[model]["mean"], report[model]["std"]
        params = report[model]["parameters"]
        cells = [
            _percent(mean["accuracy"], std["accuracy"]),
            _percent(mean["macro_sensitivity"], std["macro_sensitivity"]),
            _percent(mean["macro_specificity"], std["macro_specificity"]),
            _percent(mean["macro_f1"], std["macro_f1"]),
            _percent(mean["auc"], std["auc"]),
            _percent(mean["ece"], std["ece"]),
            f"{params / 1e6:.2f}" if params else "n/a",
        ]
        lines.append(f"| {MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per class (mean ± std, %)", ""]
    lines += ["| model | class | sensitivity | specificity | precision | F1 |", "|---|---|---|---|---|---|"]
    for model in per_model:
        for name in class_names:
            mean = report[model]["mean"]["per_class"][name]
            std = report[model]["std"]["per_class"][name]
            cells = [_percent(mean[k], std[k]) for k in ("sensitivity", "specificity", "precision", "f1")]
            lines.append(f"| {MODEL_TITLES.get(model, model)} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per fold accuracy (%)",
        "",
        "| model | " + " | ".join(f"fold {f}" for f in folds) + " |",
    ]
    lines.append("|---|" + "---|" * len(folds))
    for model, fold_metrics in per_model.items():
        cells = [f"{100 * m['accuracy']:.2f} (n={m['n']})" for m in fold_metrics]
        lines.append(f"| {MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures (test predictions of all folds pooled)", ""]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
