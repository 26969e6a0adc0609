"""The cross-validation report: report.json, report.md (the paper's mean ± std table) and figures,
all computed from the folds' predictions.csv files through classification_metrics, plus what the
statistics need beyond mean ± std over folds: patient-clustered bootstrap 95 % intervals and McNemar's
test between models on the pooled held-out predictions (statistics), and how each fold's models were
trained (epochs run, SWA or best checkpoint), read from the bundles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from sklearn.metrics import auc, roc_curve

from kdoct.bundle import load_bundle
from kdoct.errors import BundleError
from model_training.evaluation.calibration import calibrated_ece_floor, expected_calibration_error
from model_training.evaluation.classification_metrics import aggregate, compute_metrics, read_predictions
from model_training.evaluation.statistics import clustered_bootstrap_ci, mcnemar_exact, ovr_macro_auc

__all__ = ["BOOTSTRAP_METRICS", "build_report", "count_parameters", "report_markdown"]

MODEL_TITLES = {"teacher": "Teacher", "student": "Student (KD)", "student_no_kd": "Student (no KD)"}
# Pairs compared with McNemar's test, when both models are in the run.
COMPARISONS = (("teacher", "student"), ("student", "student_no_kd"))
BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "auc", "ece")


def _training_record(out_dir: Path, folds: Sequence[int], model: str) -> dict[str, Any]:
    """Per fold: epochs run, the weights exported (SWA average or best checkpoint), SWA epochs."""
    per_fold = []
    for fold in folds:
        try:
            training = load_bundle(out_dir / f"fold_{fold}" / model).manifest["provenance"]["training"]
        except (BundleError, KeyError):
            continue  # a report rebuilt from predictions alone: nothing to say about training
        per_fold.append(
            {
                "fold": fold,
                "epochs_run": training["epochs_run"],
                "best_epoch": training["best_epoch"],
                "selected_weights": training["selected_weights"],
                "swa_epochs": training["swa_epochs"],
                "stopped_early": training["stopped_early"],
            }
        )
    return {
        "folds": per_fold,
        "swa_folds": sum(1 for f in per_fold if f["selected_weights"] == "swa"),
        "stopped_early_folds": sum(1 for f in per_fold if f["stopped_early"]),
    }


def _bootstrap(labels, probabilities, patients, class_names, resamples: int) -> dict[str, Any]:
    """95 % intervals of pooled accuracy, macro F1, AUC and ECE, resampling patients. The metrics are
    computed directly (not through compute_metrics) because they run thousands of times."""
    predicted = probabilities.argmax(axis=1)
    classes = np.arange(len(class_names))

    def accuracy(indices):
        return float(np.mean(predicted[indices] == labels[indices]))

    def macro_f1(indices):
        truth, guess = labels[indices], predicted[indices]
        scores = []
        for c in classes:
            tp = np.sum((guess == c) & (truth == c))
            denominator = np.sum(guess == c) + np.sum(truth == c)
            scores.append(2 * tp / denominator if denominator else 0.0)
        return float(np.mean(scores))

    def auc(indices):
        return ovr_macro_auc(labels[indices], probabilities[indices])

    def ece(indices):
        return expected_calibration_error(probabilities[indices], labels[indices])

    metrics = {"accuracy": accuracy, "macro_f1": macro_f1, "auc": auc, "ece": ece}
    return {
        key: clustered_bootstrap_ci(metrics[key], patients, resamples=resamples, seed=0)
        for key in BOOTSTRAP_METRICS
    }


def count_parameters(bundle_dir: Path) -> int | None:
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


def _interval(value: float | None, interval: dict[str, Any]) -> str:
    if value is None:
        return "n/a"
    if interval["low"] is None:
        return f"{100 * value:.2f}"
    return f"{100 * value:.2f} [{100 * interval['low']:.2f}, {100 * interval['high']:.2f}]"


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files, no display)."""
    # deferred: matplotlib takes ~2 s to import and only the figures need it; Agg is chosen before pyplot
    # loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
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
    plt = _pyplot()
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
    out_dir: Path,
    folds: Sequence[int],
    class_names: Sequence[str],
    extra: dict[str, Any] | None = None,
    *,
    bootstrap_resamples: int = 2000,
) -> dict[str, Any]:
    """Read DIR/fold_K/predictions.csv for every fold, write report.json, report.md and PNGs."""
    out_dir = Path(out_dir)
    per_model: dict[str, list[dict[str, Any]]] = {}
    pooled: dict[str, tuple[list, list]] = {}
    labels_by_fold, patients_by_fold = [], []
    for fold in folds:
        saved = read_predictions(out_dir / f"fold_{fold}" / "predictions.csv", class_names)
        labels_by_fold.append(saved["labels"])
        # Patients are tested in exactly one fold, so pooled patient ids stay distinct clusters.
        patients_by_fold.append([row["patient_id"] for row in saved["rows"]])
        for model, probabilities in saved["models"].items():
            metrics = compute_metrics(saved["labels"], probabilities, class_names)
            per_model.setdefault(model, []).append({"fold": fold, **metrics})
            pooled.setdefault(model, ([], []))
            pooled[model][0].append(saved["labels"])
            pooled[model][1].append(probabilities)
    labels_pooled = np.concatenate(labels_by_fold)
    patients_pooled = np.concatenate(patients_by_fold)
    report: dict[str, Any] = {
        "class_names": list(class_names),
        "folds": list(folds),
        **(extra or {}),
        "models": list(per_model),
    }
    for model, fold_metrics in per_model.items():
        probabilities_pooled = np.concatenate(pooled[model][1])
        report[model] = aggregate(fold_metrics, class_names)
        report[model]["parameters"] = count_parameters(out_dir / f"fold_{folds[0]}" / model)
        report[model]["pooled"] = {
            key: compute_metrics(labels_pooled, probabilities_pooled, class_names)[key]
            for key in BOOTSTRAP_METRICS
        }
        report[model]["bootstrap_95"] = _bootstrap(
            labels_pooled, probabilities_pooled, patients_pooled, class_names, bootstrap_resamples
        )
        report[model]["training"] = _training_record(out_dir, folds, model)
        fold_floors = [calibrated_ece_floor(probabilities) for probabilities in pooled[model][1]]
        report[model]["ece_floor"] = {
            "folds": fold_floors,
            "mean": float(np.mean(fold_floors)),
            "pooled": calibrated_ece_floor(probabilities_pooled),
        }
    report["mcnemar"] = {
        f"{a}_vs_{b}": mcnemar_exact(
            labels_pooled,
            np.concatenate(pooled[a][1]).argmax(axis=1),
            np.concatenate(pooled[b][1]).argmax(axis=1),
        )
        for a, b in COMPARISONS
        if a in pooled and b in pooled
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    figures = []
    for model, (labels, probabilities) in pooled.items():
        labels_all, probabilities_all = np.concatenate(labels), np.concatenate(probabilities)
        title = f"{MODEL_TITLES.get(model, model)}, {len(folds)} folds pooled"
        matrix = np.array(compute_metrics(labels_all, probabilities_all, class_names)["confusion_matrix"])
        _plot_confusion(matrix, class_names, title, out_dir / f"confusion_{model}.png")
        _plot_roc(labels_all, probabilities_all, class_names, title, out_dir / f"roc_{model}.png")
        figures += [f"confusion_{model}.png", f"roc_{model}.png"]
    (out_dir / "report.md").write_text(report_markdown(report, figures))
    return report


def report_markdown(report: dict[str, Any], figures: Sequence[str] = (), level: int = 1) -> str:
    """report.md from report.json alone (the results command renders docs from the same function);
    `level` is the heading level of the title."""
    folds, class_names = report["folds"], report["class_names"]
    per_model = {model: report[model]["folds"] for model in report["models"]}
    title, section = "#" * level, "#" * (level + 1)
    lines = [
        f"{title} Cross-validation report ({len(folds)} of the folds, held-out test patients only)",
        "",
        "Mean ± sample std over folds (no ± for a single fold), in %. Every figure is computed from the "
        "folds' predictions.csv. ECE floor: the ECE that a perfectly calibrated model giving the same "
        "probabilities would show on the same test images (labels drawn from those probabilities, mean of "
        "500 draws): what that many images can resolve.",
        "",
        "| model | accuracy | sensitivity | specificity | macro F1 | AUC | ECE | ECE floor | params (M) |",
        "|---|---|---|---|---|---|---|---|---|",
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
            _percent(report[model]["ece_floor"]["mean"], None),
            f"{params / 1e6:.2f}" if params else "n/a",
        ]
        lines.append(f"| {MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    lines += ["", f"{section} Per class (mean ± std, %)", ""]
    lines += ["| model | class | sensitivity | specificity | precision | F1 |", "|---|---|---|---|---|---|"]
    for model in per_model:
        for name in class_names:
            mean = report[model]["mean"]["per_class"][name]
            std = report[model]["std"]["per_class"][name]
            cells = [_percent(mean[k], std[k]) for k in ("sensitivity", "specificity", "precision", "f1")]
            lines.append(f"| {MODEL_TITLES.get(model, model)} | {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{section} Per fold accuracy (%)",
        "",
        "| model | " + " | ".join(f"fold {f}" for f in folds) + " |",
    ]
    lines.append("|---|" + "---|" * len(folds))
    for model, fold_metrics in per_model.items():
        cells = [f"{100 * m['accuracy']:.2f} (n={m['n']})" for m in fold_metrics]
        lines.append(f"| {MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{section} Pooled over folds, with patient-clustered bootstrap 95 % intervals (%)",
        "",
        "| model | accuracy | macro F1 | AUC | ECE | ECE floor | folds exported as SWA average | "
        "folds stopped early |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in per_model:
        pooled, intervals = report[model]["pooled"], report[model]["bootstrap_95"]
        cells = [_interval(pooled[key], intervals[key]) for key in BOOTSTRAP_METRICS]
        cells.append(_percent(report[model]["ece_floor"]["pooled"], None))
        training = report[model]["training"]
        counted = len(training["folds"])
        cells += [f"{training['swa_folds']} of {counted}", f"{training['stopped_early_folds']} of {counted}"]
        lines.append(f"| {MODEL_TITLES.get(model, model)} | " + " | ".join(cells) + " |")
    if report["mcnemar"]:
        lines += [
            "",
            f"{section} McNemar's exact test on the pooled predictions",
            "",
            "| models (A vs B) | only A right | only B right | p |",
            "|---|---|---|---|",
        ]
        for pair, test in report["mcnemar"].items():
            a, b = pair.split("_vs_")
            lines.append(
                f"| {MODEL_TITLES.get(a, a)} vs {MODEL_TITLES.get(b, b)} | {test['a_only_correct']} | "
                f"{test['b_only_correct']} | {test['p_value']:.3g} |"
            )
    if figures:
        lines += ["", f"{section} Figures (test predictions of all folds pooled)", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
