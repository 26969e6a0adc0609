"""Out-of-fold evidence of a cross-validation run: what calibrates the deployable models, which train on
every patient and so have no held-out image of their own (docs/TRAINING.md, "Every image trains").

For every fold and role, the fold's exported model predicts its held-out test patients: raw logits (the
temperature is fitted on these, pooled over the folds) and safety-gate scores. An out-of-distribution
score only means something against the model that produced it: a network scores its own training
images lower than unseen ones, by an amount its recipe sets. So every score is divided by the median
score of that model's own training images (its *reference*), and the threshold is a quantile of these
ratios on unseen patients. `final` multiplies it by the final model's own reference: the same recipe
on more patients, the same in-sample to out-of-sample relation.

What the gate then does is measured honestly, leave one fold out: fold k's images are judged with the
ratio fitted on the other folds' test patients (and fold k's quality bounds, fitted on its training
images), never on their own scores. In-distribution B-scans, an unseen disease (DME) and non-OCT images
are judged the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from kdoct.probabilities import softmax
from model_training.config import ExperimentConfig, config_to_dict
from model_training.evaluation.calibration import expected_calibration_error, fit_temperature

__all__ = [
    "DEFAULT_OOF_KEEP",
    "FoldScores",
    "OOF_JSON",
    "oof_markdown",
    "read_oof",
    "recipe_sha256",
    "summarise_role",
]

log = logging.getLogger(__name__)

OOF_JSON = "oof.json"
# The share of unseen in-distribution B-scans the gate's OOD score keeps: issue 27 asks <= 3 % flagged,
# and the quality check refuses about 1 % more out of fold (docs/RESULTS.md).
DEFAULT_OOF_KEEP = 0.98
# What `final` may change of a cross-validated recipe: how long it trains and which weights it keeps
# (fixed epochs and the last or SWA weights, since it has no validation split to choose on).
_FINAL_ONLY = ("epochs", "patience", "swa", "warmup_epochs", "export_weights", "monitor")


def recipe_sha256(config: ExperimentConfig | dict[str, Any]) -> str:
    """The recipe a cross-validation run measured (a config, or the dict a bundle's provenance records):
    without the fields a run directory, the folds or `final` set, hashed; `final` refuses out-of-fold
    evidence of another recipe."""
    data = json.loads(json.dumps(config if isinstance(config, dict) else config_to_dict(config)))
    for key in ("source_path", "folds_to_run", "run_no_kd", "name"):
        data.pop(key, None)
    for role in ("teacher", "student"):
        for key in _FINAL_ONLY:
            data[role].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass
class FoldScores:
    """One fold's model on images it never trained on; OOD scores divided by its reference."""

    fold: int
    logits: np.ndarray  # raw logits of the test patients (N, C)
    labels: np.ndarray  # (N,)
    reference: float  # median OOD score of the model's own training images
    ratios: np.ndarray  # test patients' OOD scores / reference
    quality_flagged: np.ndarray  # test patients refused by the fold's quality bounds
    other: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (ratios, quality flagged): DME, non-OCT


def _flag_rate(ratios: np.ndarray, quality: np.ndarray, threshold: float) -> float:
    return float(((ratios > threshold) | quality).mean()) if len(ratios) else float("nan")


def _leave_one_fold_out(folds: list[FoldScores], keep: float) -> dict[str, Any]:
    """Each fold judged with the ratio fitted on the other folds' test patients."""
    flagged: dict[str, list[np.ndarray]] = {"in_distribution": []}
    per_fold = []
    for held in folds:
        others = np.concatenate([f.ratios for f in folds if f is not held])
        threshold = float(np.quantile(others, keep))
        verdicts = {"in_distribution": (held.ratios > threshold) | held.quality_flagged}
        for name, (ratios, quality) in held.other.items():
            verdicts[name] = (ratios > threshold) | quality
        for name, values in verdicts.items():
            flagged.setdefault(name, []).append(values)
        share = float(verdicts["in_distribution"].mean())
        per_fold.append({"fold": held.fold, "threshold_ratio": round(threshold, 4),
                         "flagged_in_distribution": round(share, 4)})  # fmt: skip
    rates = {}
    for name, values in flagged.items():
        pooled = np.concatenate(values)
        rates[name] = {"images": int(len(pooled)), "flagged": int(pooled.sum()),
                       "rate": round(float(pooled.mean()), 4)}  # fmt: skip
    return {"flagged": rates, "per_fold": per_fold}


def _lofo_calibrated(folds: list[FoldScores]) -> np.ndarray:
    """Each fold's probabilities at the temperature fitted on the other folds' logits."""
    rows = []
    for held in folds:
        logits = np.concatenate([f.logits for f in folds if f is not held])
        labels = np.concatenate([f.labels for f in folds if f is not held])
        rows.append(softmax(held.logits, fit_temperature(logits, labels)))
    return np.concatenate(rows)


def summarise_role(folds: list[FoldScores], keep: float = DEFAULT_OOF_KEEP) -> dict[str, Any]:
    """The temperature and gate ratio `final` uses, and what they do to unseen patients (leave one fold
    out)."""
    logits = np.concatenate([f.logits for f in folds])
    labels = np.concatenate([f.labels for f in folds])
    ratios = np.concatenate([f.ratios for f in folds])
    temperature = fit_temperature(logits, labels)
    ece = expected_calibration_error
    near = {}
    for name in folds[0].other:
        outside = np.concatenate([f.other[name][0] for f in folds])
        if len(outside) and name != "non_oct":
            scores = np.concatenate([ratios, outside])
            truth = np.concatenate([np.zeros(len(ratios)), np.ones(len(outside))])
            near[name] = round(float(roc_auc_score(truth, scores)), 4)
    return {
        "images": int(len(labels)),
        "accuracy": round(float((logits.argmax(1) == labels).mean()), 4),
        "temperature": round(temperature, 4),
        "ece_uncalibrated": round(ece(softmax(logits), labels), 4),
        "ece_at_pooled_temperature": round(ece(softmax(logits, temperature), labels), 4),
        "ece_leave_one_fold_out": round(ece(_lofo_calibrated(folds), labels), 4),
        "ood": {
            "keep": keep,
            "reference": "median OOD score of the model's own training images",
            "threshold_ratio": round(float(np.quantile(ratios, keep)), 4),
            "references_per_fold": [round(f.reference, 4) for f in folds],
            "auroc_against_in_distribution": near,
            **_leave_one_fold_out(folds, keep),
            # The drift alarm's reference (kdoct/drift.py): unseen patients' ratios, pooled.
            "ratios": [round(float(r), 4) for r in ratios],
        },
    }


def read_oof(path: Path) -> dict[str, Any]:
    """An oof.json written by `python -m model_training oof`."""
    data = json.loads(Path(path).read_text())
    if "recipe_sha256" not in data or "roles" not in data:
        raise ValueError(f"{path}: not an oof.json of `python -m model_training oof`")
    return data


def _rate(entry: dict[str, Any]) -> str:
    return f"{entry['flagged']} of {entry['images']} ({100 * entry['rate']:.1f} %)"


def oof_markdown(report: dict[str, Any]) -> str:
    """The out-of-fold section of the results: what `final` takes from this run, and what it did to
    unseen patients, leave one fold out."""
    lines = [
        "#### Out of fold: the calibration and safety gate of the model trained on every patient",
        "",
        "Computed by `python -m model_training oof` (model_training/evaluation/oof.py) from every fold's "
        "exported models. Temperature: fitted on the pooled out-of-fold logits; its ECE leave one fold out "
        "(each fold at the temperature of the other folds). Gate: the threshold is the "
        f"{100 * next(iter(report['roles'].values()))['ood']['keep']:g}th percentile of unseen patients' OOD "
        "score over the median score of the fold model's own training images; each fold judged with the "
        "ratio of the other folds, its own quality bounds. `final --oof` applies both to the model trained "
        "on every patient.",
        "",
        "| model | accuracy | temperature | ECE uncalibrated | ECE leave one fold out | gate ratio | "
        "in-distribution flagged | "
        + " | ".join(
            f"{name} flagged"
            for name in next(iter(report["roles"].values()))["ood"]["flagged"]
            if name != "in_distribution"
        )
        + " | AUROC of the OOD score |",
    ]
    others = [n for n in next(iter(report["roles"].values()))["ood"]["flagged"] if n != "in_distribution"]
    lines.append("|" + "---|" * (8 + len(others)))
    for role, summary in report["roles"].items():
        ood = summary["ood"]
        auroc = ", ".join(
            f"{name} {value:.3f}" for name, value in ood["auroc_against_in_distribution"].items()
        )
        lines.append(
            f"| {role} | {100 * summary['accuracy']:.2f} % | {summary['temperature']:.3f} | "
            f"{100 * summary['ece_uncalibrated']:.2f} % | {100 * summary['ece_leave_one_fold_out']:.2f} % | "
            f"{ood['threshold_ratio']:.3f} | {_rate(ood['flagged']['in_distribution'])} | "
            + " | ".join(_rate(ood["flagged"][name]) for name in others)
            + f" | {auroc or '-'} |"
        )
    return "\n".join(lines) + "\n"
