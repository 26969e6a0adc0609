"""The end of a training stage: calibrate the trained model on the validation split, fit its safety
gate, write final.pt (everything export needs) and export the verified bundle, on rank 0, while the
other ranks wait. Teacher and student both end here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kdoct.errors import ConfigError
from kdoct.labels import class_names as class_set_names
from kdoct.probabilities import softmax
from model_training.config import ExperimentConfig, StageConfig, config_to_dict
from model_training.data.dataset import eval_loader
from model_training.data.image_cache import decoded_images
from model_training.data.manifest import manifest_fingerprint
from model_training.evaluation.calibration import expected_calibration_error, fit_temperature
from model_training.evaluation.predict import evaluate_logits
from model_training.export.safety_fit import fit_safety_gate, fit_safety_gate_oof
from model_training.layout import bundle_dir, split_path, work_dir
from model_training.train.checkpoint import FINAL_NAME, export_checkpoint, save_checkpoint
from model_training.train.distributed import DistContext
from model_training.train.fit import FitResult
from model_training.train.stage_model import stage_spec

__all__ = ["finish_stage", "provenance"]

log = logging.getLogger(__name__)


def provenance(
    config: ExperimentConfig, out_dir: Path, fold: int | None, extra: dict | None = None
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    return {
        "config": config_to_dict(config),
        "config_path": config.source_path,
        "fold": fold,
        "dataset_fingerprint": manifest_fingerprint(out_dir / "manifest.csv"),
        "folds_fingerprint": manifest_fingerprint(split_path(out_dir, fold)),
        **(extra or {}),
    }


def _golden_paths(val_samples, count: int) -> list[str]:
    """A few validation images, one class after another, so the golden set covers the classes."""
    by_class: dict[str, list] = {}
    for sample in val_samples:
        by_class.setdefault(sample.label, []).append(sample.path)
    chosen: list[str] = []
    while len(chosen) < count and any(by_class.values()):
        for paths in by_class.values():
            if paths and len(chosen) < count:
                chosen.append(paths.pop(0))
    return chosen


def _fit_gate(
    model, split: dict[str, list], class_names, spec, batch_size: int, context: DistContext, oof: dict | None
):
    """The model's safety gate: quality bounds and feature statistics from its training images, the
    out-of-distribution threshold from its validation images or, without any, from the cross-validated
    ratio of `oof`; each image decoded as the service decodes."""
    index = {name: i for i, name in enumerate(class_names)}
    model = model.to(context.device).eval()
    train = {
        "train_images": [decoded_images.open(s.path) for s in split["train"]],
        "train_labels": [index[s.label] for s in split["train"]],
        "num_classes": len(class_names),
        "spec": spec,
        "batch_size": batch_size,
    }
    try:
        if not split["val"]:
            return fit_safety_gate_oof(model, oof=oof["ood"], **train)
        return fit_safety_gate(model, val_images=[decoded_images.open(s.path) for s in split["val"]], **train)
    finally:
        model.cpu()


def _calibrate(result: FitResult, config, stage, split, class_names, spec, context, oof: dict | None):
    """(calibration, metrics) of the trained model: the temperature fitted on its validation images, or,
    for a model trained on every patient, the one cross-validation fitted on the same recipe's
    out-of-fold logits (`oof`, the role's entry of oof.json)."""
    if not split["val"]:
        if oof is None:
            raise ConfigError(
                "a model without validation images takes its temperature and safety-gate threshold from a "
                "cross-validation run of the same recipe: pass its oof.json (`final --oof`)"
            )
        calibration = {
            "temperature": float(oof["temperature"]),
            "fitted_on": "cross-validation out-of-fold logits",
            "ece_leave_one_fold_out": oof["ece_leave_one_fold_out"],
        }
        metrics = {"cross_validation": {"accuracy": oof["accuracy"], "images": oof["images"]}}
        return calibration, metrics
    loader = eval_loader(split["val"], class_names, spec, stage.eval_batch_size, config.data.num_workers)
    logits, labels = evaluate_logits(result.model.to(context.device), loader, device=context.device)
    result.model.cpu()
    before = expected_calibration_error(softmax(logits), labels)
    temperature = fit_temperature(logits, labels) if config.calibrate else 1.0
    calibration = {
        "temperature": temperature,
        "fitted_on": "validation",
        "ece_before": before,
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels),
    }
    validation = {"accuracy": float((logits.argmax(axis=1) == labels).mean()), "images": len(labels)}
    return calibration, {"validation": validation}


def finish_stage(
    result: FitResult,
    *,
    config: ExperimentConfig,
    stage: StageConfig,
    role: str,
    bundle_role: str,
    split: dict[str, list],
    out_dir: Path,
    fold: int | None,
    context: DistContext,
    extra_provenance: dict | None = None,
    oof: dict | None = None,
) -> Path:
    """Calibrate on the validation split (or from `oof`, the cross-validated evidence of the recipe, when
    the model trained on every patient), write final.pt and export the bundle (rank 0). Returns the
    bundle directory (on every rank, after the others waited for it)."""
    target = bundle_dir(out_dir, fold, role)
    if context.is_main:
        class_names = class_set_names(config.data.classes)
        spec = stage_spec(stage)
        calibration, metrics = _calibrate(result, config, stage, split, class_names, spec, context, oof)
        training = {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "monitor": stage.monitor,
            "best_value": result.best_value,
            "selected_weights": result.selected,
            "swa_epochs": result.swa_epochs,
            "stopped_early": result.stopped_early,
            "precision": result.precision,
            "world_size": context.world_size,
        }
        meta = {
            "role": bundle_role,
            "arch": stage.arch,
            "class_names": list(class_names),
            "preprocess": spec.to_dict(),
            "name": f"{config.name}-{role}" + ("" if fold is None else f"-fold{fold}"),
            "version": config.version,
            "calibration": calibration,
            "metrics": metrics,
            "provenance": {**provenance(config, out_dir, fold, extra_provenance), "training": training},
            # Golden images check that a runtime reproduces the model: any labelled image serves.
            "golden_paths": _golden_paths(split["val"] or split["train"], config.golden_images),
        }
        safety = _fit_gate(result.model, split, class_names, spec, stage.eval_batch_size, context, oof)
        checkpoint = save_checkpoint(work_dir(out_dir, fold, role) / FINAL_NAME, result.model, meta, safety)
        if target.exists():
            shutil.rmtree(target)  # a bundle from an interrupted earlier run of this same stage
        export_checkpoint(checkpoint, target)
        log.info("%s fold %s: %s, calibration %s, bundle %s", role, fold, metrics, calibration, target)
    context.barrier()
    return target
