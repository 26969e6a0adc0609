"""The deployable model: teacher and student trained on every patient of the manifest, then a card of
what they learned from.

Cross-validation measures a recipe; this trains the recipe once more on all the data, for serving.
With `oof` (the cross-validation run's oof.json, model_training/evaluation/oof.py) every patient trains:
the temperature and the safety gate's threshold come from the same recipe's out-of-fold predictions.
Without it a held-back slice calibrates the models (and a test slice may be set apart); nothing here is
then a test figure: the held-back slice chose the temperature, and the card points to the
cross-validation run for held-out figures.

Every call compares the recipe stamp in the card (model_training/runs/recipe_stamp.py) with the config,
data, code and evidence it is given: a model trained from another recipe is retrained (`on_stale`
"retrain", the old run moved to DIR.previous), kept with a warning ("keep") or refused ("fail").

Run directory (`--out DIR`):
    DIR/manifest.csv, DIR/split.csv     the data and its one train / held-back split (by patient)
    DIR/teacher/, DIR/student/          the bundles
    DIR/work/<role>/                    last.pt (resume), final.pt, log.jsonl
    DIR/card.json, DIR/MODEL_CARD.md    what was trained on what, with which epochs and why
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError
from kdoct.safety import GATE_JSON, load_gate
from model_training.config import ExperimentConfig, StageConfig
from model_training.data.dataset import eval_loader
from model_training.data.final_split import make_final_split, read_final_split, write_final_split
from model_training.data.image_cache import decoded_images
from model_training.data.manifest import manifest_fingerprint, write_manifest
from model_training.evaluation.oof import read_oof, recipe_sha256
from model_training.evaluation.predict import evaluate_logits
from model_training.layout import bundle_dir, is_complete_bundle, split_path
from model_training.runs.recipe_stamp import recipe_stamp, stale_parts
from model_training.runs.run_data import load_samples
from model_training.train.distill import train_student
from model_training.train.distributed import DistContext, broadcast_flag
from model_training.train.teacher import train_teacher

__all__ = ["StaleModelError", "card_markdown", "chosen_epochs", "run_final"]

log = logging.getLogger(__name__)

ROLES = ("teacher", "student")
CARD_JSON = "card.json"
CARD_MD = "MODEL_CARD.md"


def chosen_epochs(stage: StageConfig, role: str, cv_report: Path | None) -> dict[str, Any]:
    """How many epochs the final model of `role` trains, and why.

    From a cross-validation report: the median over folds of the epochs whose weights were exported
    (every epoch when the SWA average was exported; up to the best epoch for a best checkpoint).
    Without one: the config's epochs.
    """
    if cv_report is None:
        return {"epochs": stage.epochs, "source": "config"}
    try:
        report = json.loads(Path(cv_report).read_text())
        folds = report[role]["training"]["folds"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{cv_report}: not a cv report.json with the {role}'s training record ({exc}); "
            f"rerun `cv` with this version, or leave out --epochs-from to use the config's epochs"
        ) from None
    if not folds:
        raise ConfigError(f"{cv_report}: the report records no trained {role} folds")
    used = [
        f["best_epoch"] + 1 if f["selected_weights"] == "best_checkpoint" else f["epochs_run"] for f in folds
    ]
    return {
        "epochs": max(1, round(statistics.median(used))),
        "source": str(cv_report),
        "per_fold": used,
        "rule": "median over folds of the epochs behind the exported weights",
    }


def _final_stage(stage: StageConfig, epochs: int) -> StageConfig:
    """The stage as the final model trains it: a fixed number of epochs, no early stopping and no
    best-checkpoint choice (there is no validation split to choose on, only the held-back calibration
    slice), SWA over the same last epochs as in the config, else the last epoch's weights."""
    swa = stage.swa
    if swa.enabled:
        window = stage.epochs - swa.start_epoch
        swa = swa.model_copy(update={"start_epoch": max(0, epochs - window)})
    warmup = min(stage.warmup_epochs, max(0.0, epochs - 1))
    return stage.model_copy(
        update={
            "epochs": epochs,
            "patience": epochs + 1,
            "swa": swa,
            "warmup_epochs": warmup,
            "export_weights": "last",
        }
    )


class StaleModelError(ConfigError):
    """The final model in DIR was trained from another recipe than the one given (on_stale "fail")."""


def _prepare_split(
    config: ExperimentConfig, out_dir: Path, holdout: float, test: float, context: DistContext, samples
):
    path = split_path(out_dir, None)
    if context.is_main and not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(samples, out_dir / "manifest.csv")
        write_final_split(samples, make_final_split(samples, holdout, config.data.fold_seed, test), path)
    context.barrier()
    split = read_final_split(path)
    decoded_images.enable(config.data.cache_images)
    decoded_images.fill((s.path for part in split.values() for s in part), progress=context.is_main)
    return split


def _composition(samples) -> dict[str, Any]:
    return {
        "images": len(samples),
        "patients": len({s.patient_id for s in samples}),
        "per_class": dict(sorted(Counter(s.label for s in samples).items())),
    }


def _oof_evidence(config: ExperimentConfig, oof: Path | None) -> dict[str, Any] | None:
    """The out-of-fold evidence, refused unless it measured this very recipe."""
    if oof is None:
        return None
    try:
        evidence = read_oof(oof)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--oof: {exc}") from None
    if evidence["recipe_sha256"] != recipe_sha256(config):
        raise ConfigError(
            f"{oof} measured another recipe than {config.source_path} (recipe sha256 "
            f"{evidence['recipe_sha256'][:12]}… against {recipe_sha256(config)[:12]}…): run `cv` and `oof` "
            f"on this config, or train with a held-back slice (leave out --oof)"
        )
    return evidence


def _up_to_date(out_dir: Path, stamp: dict, on_stale: str) -> dict[str, Any] | None:
    """The card of a complete, current final model in `out_dir`, or None when it must be trained."""
    card_path = out_dir / CARD_JSON
    if not (card_path.is_file() and all(_complete(bundle_dir(out_dir, None, role)) for role in ROLES)):
        return None
    card = json.loads(card_path.read_text())
    changed = stale_parts(card.get("recipe"), stamp)
    if not changed:
        log.info("final: %s is complete and current (delete it to train again)", out_dir)
        return card
    why = f"{out_dir} was trained from another recipe: changed since: {', '.join(changed)}"
    if on_stale == "keep":
        log.warning("final: %s; kept as asked (retrain: delete it, or run with --if-stale retrain)", why)
        return card
    if on_stale == "fail":
        raise StaleModelError(f"{why}; retrain with --if-stale retrain (or delete it)")
    previous = out_dir.with_name(out_dir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    out_dir.rename(previous)
    log.warning("final: %s; retraining (the old model is in %s)", why, previous)
    return None


def run_final(
    config: ExperimentConfig,
    out_dir: Path,
    context: DistContext,
    *,
    holdout: float = 0.15,
    test: float = 0.0,
    epochs_from: Path | None = None,
    oof: Path | None = None,
    on_stale: str = "retrain",
) -> dict[str, Any] | None:
    """Train, calibrate and export the final teacher and student; returns the card on rank 0. With
    `oof` every patient trains (holdout and test are then 0)."""
    out_dir = Path(out_dir)
    evidence = _oof_evidence(config, oof)
    if evidence is not None:
        holdout = test = 0.0
    samples = load_samples(config, out_dir)
    stamp = recipe_stamp(config, samples, epochs_from=epochs_from, oof=oof)
    card = _up_to_date(out_dir, stamp, on_stale) if context.is_main else None
    if broadcast_flag(context, card is not None):
        return card
    if not out_dir.exists():
        samples = load_samples(config, out_dir)  # a stale run was moved away with its generated data
    started = time.perf_counter()
    split = _prepare_split(config, out_dir, holdout, test, context, samples)
    epochs = {
        role: chosen_epochs(getattr(config, role), role, epochs_from) for role in ("teacher", "student")
    }
    final_config = config.model_copy(
        update={
            "teacher": _final_stage(config.teacher, epochs["teacher"]["epochs"]),
            "student": _final_stage(config.student, epochs["student"]["epochs"]),
        }
    )
    log.info(
        "final: %d training / %d held-back / %d test images; epochs teacher %d, student %d (%s)",
        len(split["train"]), len(split["val"]), len(split["test"]), epochs["teacher"]["epochs"],
        epochs["student"]["epochs"], epochs["teacher"]["source"],
    )  # fmt: skip
    roles = evidence["roles"] if evidence is not None else {}
    teacher_dir = bundle_dir(out_dir, None, "teacher")
    if not _complete(teacher_dir):
        train_teacher(final_config, split, out_dir, None, context, resume=True, oof=roles.get("teacher"))
    if not _complete(bundle_dir(out_dir, None, "student")):
        train_student(
            final_config, split, out_dir, None, context, teacher_dir=teacher_dir, resume=True,
            oof=roles.get("student"),
        )  # fmt: skip
    if not context.is_main:
        return None
    card = _card(final_config, out_dir, split, epochs, holdout, time.perf_counter() - started)
    card["recipe"] = stamp
    card["calibrated_from"] = str(oof) if oof is not None else "held-back slice"
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / CARD_MD).write_text(card_markdown(card))
    return card


def _complete(directory: Path) -> bool:
    """A verified bundle with a safety gate: one exported before the gate existed is exported again
    (from its finished training state: minutes, not a retraining), since the service refuses it."""
    if not is_complete_bundle(directory):
        return False
    return GATE_JSON in json.loads((directory / "bundle.json").read_text())["files"]


def _card(config, out_dir: Path, split, epochs, holdout: float, seconds: float) -> dict[str, Any]:
    models = {}
    for role in ("teacher", "student"):
        bundle = load_bundle(bundle_dir(out_dir, None, role))
        stage = getattr(config, role)
        training = bundle.manifest["provenance"]["training"]
        models[role] = {
            "bundle": str(bundle.path),
            "name": bundle.name,
            "sha256": bundle.sha256,
            "arch": bundle.arch,
            "init": stage.init,
            "input_size": list(bundle.preprocess.input_size),
            "epochs": epochs[role],
            "selected_weights": training["selected_weights"],
            "swa_epochs": training["swa_epochs"],
            "calibration": bundle.manifest.get("calibration"),
            "held_back_accuracy": bundle.manifest["metrics"].get("validation", {}).get("accuracy"),
            "cross_validation": bundle.manifest["metrics"].get("cross_validation"),
            "test_accuracy": _test_accuracy(bundle, split["test"]),
            "safety_gate": _gate_figures(bundle),
        }
    return {
        "config": config.source_path,
        "data": {
            "source": config.data.path,
            "classes": config.data.classes,
            "dataset_fingerprint": manifest_fingerprint(out_dir / "manifest.csv"),
            "split_fingerprint": manifest_fingerprint(split_path(out_dir, None)),
            "training": _composition(split["train"]),
            "held_back": {**_composition(split["val"]), "fraction_of_patients": holdout},
            "test": _composition(split["test"]),
        },
        "models": models,
        "wall_time_s_this_invocation": round(seconds, 1),
        "note": _NOTE_OOF if not split["val"] else _NOTE_HELD_BACK,
    }


_NOTE_HELD_BACK = (
    "held_back_accuracy is on the slice that fitted the temperature and the safety gate's threshold: not a "
    "test figure. test_accuracy is on the test patients, never trained or tuned on (a few dozen patients: "
    "see the cross-validation run in docs/RESULTS.md for the recipe's held-out figures with intervals)."
)
_NOTE_OOF = (
    "Every labelled image trained these models, so nothing here is measured on them. The figures are the "
    "recipe's, from its cross-validation (docs/RESULTS.md): the same config trained on 64 % of the "
    "patients and judged on 20 % it never saw, per fold. The temperature is fitted on the pooled "
    "out-of-fold logits; the safety gate's threshold is the out-of-fold ratio to the training images' "
    "median score, times this model's own median; the flag rates are what that rule did to unseen "
    "patients, leave one fold out (model_training/evaluation/oof.py)."
)


def _gate_figures(bundle) -> dict[str, Any]:
    """The gate's threshold and, when calibrated by cross-validation, what its rule flagged out of fold."""
    gate = load_gate(bundle.path, bundle.manifest["files"])
    if gate is None:
        return {}
    return {
        "threshold": gate.ood.threshold,
        "threshold_from": gate.summary["ood"].get("threshold_from"),
        "flagged_out_of_fold": gate.summary.get("cross_validation", {}).get("flagged"),
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _test_accuracy(bundle, samples) -> float | None:
    """Accuracy of the bundle's model on the test slice (None without one): patients neither trained
    nor tuned on, so a held-out figure (about 75 images here: wide uncertainty)."""
    if not samples:
        return None

    loader = eval_loader(samples, bundle.class_names, bundle.preprocess, 32)
    logits, targets = evaluate_logits(bundle.model(), loader, device=torch.device("cpu"))
    return float((logits.argmax(axis=1) == targets).mean())


def card_markdown(card: dict[str, Any]) -> str:
    data = card["data"]
    lines = [
        "# Final model card",
        "",
        f"Config `{card['config']}`; data `{data['source']}` ({data['classes']}).",
        "",
        "| part | images | patients | per class |",
        "|---|---|---|---|",
    ]
    parts = [("training", data["training"])]
    if data["held_back"]["images"]:
        parts.append(("held back (calibration)", data["held_back"]))
    if data.get("test", {}).get("images"):
        parts.append(("test (never trained or tuned on)", data["test"]))
    for name, part in parts:
        per_class = ", ".join(f"{label} {n}" for label, n in part["per_class"].items())
        lines.append(f"| {name} | {part['images']} | {part['patients']} | {per_class} |")
    lines += _models_table(card["models"])
    bundles = ", ".join(
        f"`{model['bundle']}` (sha256 {model['sha256'][:16]}…)" for model in card["models"].values()
    )
    lines += [
        "",
        f"Bundles: {bundles}.",
        "",
        card["note"],
        "",
    ]
    for role, model in card["models"].items():
        gate = model.get("safety_gate") or {}
        if gate.get("flagged_out_of_fold"):
            rates = "; ".join(
                f"{name.replace('_', ' ')} {v['flagged']} of {v['images']} ({100 * v['rate']:.1f} %)"
                for name, v in gate["flagged_out_of_fold"].items()
            )
            lines += [
                f"Safety gate of the {role} (threshold {gate['threshold']:.4f}); its rule flagged, out of "
                f"fold: {rates}.",
                "",
            ]
    if card.get("recipe"):
        lines += ["Recipe stamp (`final` retrains when one of these no longer matches):", ""]
        lines += [f"- {key}: `{value}`" for key, value in card["recipe"].items()]
        lines.append("")
    return "\n".join(lines)


def _models_table(models: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| model | arch | init | input | epochs (from) | weights | temperature (fitted on) | accuracy | "
        "test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for role, model in models.items():
        size = "x".join(str(v) for v in model["input_size"])
        calibration = model["calibration"] or {}
        if model.get("cross_validation"):
            accuracy = f"{_percent(model['cross_validation']['accuracy'])} (cross-validation, out of fold)"
        else:
            accuracy = f"{_percent(model['held_back_accuracy'])} (held back)"
        lines.append(
            f"| {role} | {model['arch']} | {model['init'] or 'random'} | {size} | "
            f"{model['epochs']['epochs']} ({model['epochs']['source']}) | {model['selected_weights']} | "
            f"{calibration.get('temperature', 1.0):.3f} ({calibration.get('fitted_on', '-')}) | {accuracy} | "
            f"{_percent(model.get('test_accuracy'))} |"
        )
    return lines
