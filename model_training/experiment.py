"""What every training command shares: the run directory layout, the folds (computed once, then
only read), provenance, and finishing a stage (calibrate, final checkpoint, export the bundle).

Run directory (`--out DIR`):
    DIR/manifest.csv, DIR/folds.csv           the data and the one fold assignment every stage reads
    DIR/fold_K/teacher/, DIR/fold_K/student/   bundles
    DIR/fold_K/work/<role>/                    last.pt (resume), final.pt (export), log.jsonl
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from kdoct.errors import ConfigError, DataError
from kdoct.labels import class_names as class_set_names
from kdoct.models import INIT_SOURCES, architecture_preprocess, create_model, load_initial_weights
from kdoct.preprocess import PreprocessSpec
from kdoct.probabilities import softmax
from model_training.calibration import expected_calibration_error, fit_temperature
from model_training.checkpoint import FINAL_NAME, export_checkpoint, save_checkpoint
from model_training.config import ExperimentConfig, StageConfig, config_to_dict
from model_training.data.folds import FoldTable, make_folds, read_folds, write_folds
from model_training.data.image_cache import decoded_images
from model_training.data.manifest import manifest_fingerprint, write_manifest
from model_training.distributed import DistContext
from model_training.engine import evaluate_logits
from model_training.fit import FitResult, eval_loader
from model_training.safety_fit import fit_safety_gate

__all__ = [
    "build_model",
    "bundle_dir",
    "finish_stage",
    "freeze_early_stages",
    "load_samples",
    "prepare_folds",
    "split_path",
    "stage_spec",
    "work_dir",
]

log = logging.getLogger(__name__)


def stage_spec(stage: StageConfig) -> PreprocessSpec:
    """The stage's preprocessing: the architecture's own (timm's pretrained config: mean, std, size,
    interpolation), with the input size and interpolation the config sets, if any."""
    native = architecture_preprocess(stage.arch)
    size = stage.input_size or native["input_size"]
    return PreprocessSpec(
        input_size=(size, size),
        mean=native["mean"],
        std=native["std"],
        interpolation=stage.interpolation or native["interpolation"],
        channel_mode=stage.channel_mode,
    )


def build_model(stage: StageConfig, num_classes: int) -> torch.nn.Module:
    """The stage's model with its initial weights and a small, fresh classifier.

    timm's EfficientNet draws its classifier from U(+-1/sqrt(num_classes)): with 3 classes and 1408
    features that starts at logits of about +-10 and a loss near 5, and from random weights the first
    epochs are spent undoing it. A head of N(0, 0.01) starts every model at the uniform prediction.
    A local weights file that holds a matching head (a kdoct checkpoint) still overrides it.
    """
    kwargs = {"drop_rate": stage.drop_rate, "drop_path_rate": stage.drop_path_rate}
    keyword = stage.init if stage.init in INIT_SOURCES else None
    model = create_model(stage.arch, num_classes, keyword, **kwargs)
    classifier = model.get_classifier()
    torch.nn.init.normal_(classifier.weight, std=0.01)
    torch.nn.init.zeros_(classifier.bias)
    if stage.init and keyword is None:
        load_initial_weights(model, Path(stage.init))
    freeze_early_stages(model, stage.frozen_stages, stage.arch)
    return model


def freeze_early_stages(model: torch.nn.Module, stages: int, arch: str) -> list[str]:
    """Stop the stem and the first `stages` stages from training (requires_grad False); returns the
    frozen parameter names. Their BatchNorm statistics still follow the data (and SWA's recompute)."""
    if stages == 0:
        return []
    if hasattr(model, "conv_stem") and hasattr(model, "blocks"):  # timm EfficientNet family
        prefixes, total = ["conv_stem.", "bn1."], len(model.blocks)
        prefixes += [f"blocks.{i}." for i in range(stages)]
    elif hasattr(model, "stem") and hasattr(model, "stages"):  # timm ConvNeXt(V2)
        prefixes, total = ["stem."], len(model.stages)
        prefixes += [f"stages.{i}." for i in range(stages)]
    else:
        raise ConfigError(f"frozen_stages is not supported for {arch}: it has no stem and stages timm names")
    if stages >= total:
        raise ConfigError(f"frozen_stages={stages}: {arch} has {total} stages; freeze fewer so some train")
    frozen = []
    for name, parameter in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def _stage_root(out_dir: Path, fold: int | None) -> Path:
    """DIR/fold_K for a cross-validation fold; DIR itself for a final model (fold None)."""
    return Path(out_dir) if fold is None else Path(out_dir) / f"fold_{fold}"


def work_dir(out_dir: Path, fold: int | None, role: str) -> Path:
    return _stage_root(out_dir, fold) / "work" / role


def bundle_dir(out_dir: Path, fold: int | None, role: str) -> Path:
    return _stage_root(out_dir, fold) / role


def split_path(out_dir: Path, fold: int | None) -> Path:
    """The file that fixes which patients a stage trains on: DIR/folds.csv, or DIR/split.csv for a
    final model. Its fingerprint goes into every bundle, so a student can check its teacher's."""
    return Path(out_dir) / ("split.csv" if fold is None else "folds.csv")


def load_samples(config: ExperimentConfig, out_dir: Path) -> list:
    """The dataset's samples as the config describes them (synthetic data is generated here)."""
    from model_training.data import readers

    data = config.data
    if data.layout == "synthetic":
        from model_training.data.synthetic import generate_dataset

        synthetic_dir = Path(out_dir) / "data"
        manifest = synthetic_dir / "manifest.csv"
        if not manifest.is_file():
            if synthetic_dir.exists():
                shutil.rmtree(synthetic_dir)  # a half-written folder from an interrupted run
            manifest = generate_dataset(
                synthetic_dir,
                data.synthetic.patients,
                data.synthetic.bscans_per_patient,
                classes=data.classes,
                seed=data.synthetic.seed,
                size=data.synthetic.size,
                progress=True,
            )
        return readers.index_manifest(manifest, data.classes)
    path = Path(data.path)
    if not path.exists():
        raise DataError(f"data.path {path} does not exist (relative paths are read from {Path.cwd()})")
    if data.layout == "kermany":
        return readers.index_kermany(path, data.classes, progress=True)
    if data.layout == "neh":
        return readers.index_neh(
            path, data.classes, progress=True, label_equals_class=data.neh_label_equals_class
        )
    return readers.index_manifest(path, data.classes, progress=True)


def prepare_folds(config: ExperimentConfig, out_dir: Path, context: DistContext) -> FoldTable:
    """DIR/folds.csv: reused when present, else copied from data.folds, else made once from the data."""
    out_dir = Path(out_dir)
    folds_path = out_dir / "folds.csv"
    manifest_path = out_dir / "manifest.csv"
    if context.is_main and not folds_path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.data.folds:
            source = read_folds(config.data.folds)  # validates before we adopt it
            # Rewritten, not copied: its relative image paths must now resolve from the run directory.
            write_folds(source.samples, source.role_table, folds_path)
            write_manifest(source.samples, manifest_path)
        else:
            samples = load_samples(config, out_dir)
            write_manifest(samples, manifest_path)
            roles = make_folds(samples, config.data.k, config.data.fold_seed, config.data.val_fraction)
            write_folds(samples, roles, folds_path)
            log.info("wrote %s (%d images, %d folds)", folds_path, len(samples), config.data.k)
    context.barrier()
    table = read_folds(folds_path)
    if table.k != config.data.k:
        raise ConfigError(
            f"{folds_path} has {table.k} folds but the config says data.k={config.data.k}: use a new --out "
            f"directory or set data.k={table.k}"
        )
    allowed = set(class_set_names(config.data.classes))
    unknown = sorted({s.label for s in table.samples} - allowed)
    if unknown:
        raise DataError(f"{folds_path}: labels {unknown} are not in class set {config.data.classes}")
    decoded_images.enable(config.data.cache_images)
    decoded_images.fill((s.path for s in table.samples), progress=context.is_main)
    return table


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


def _fit_gate(model, split: dict[str, list], class_names, spec, batch_size: int, context: DistContext):
    """The model's safety gate: quality bounds and feature statistics from its training images, the
    out-of-distribution threshold from its validation images, each decoded as the service decodes."""
    index = {name: i for i, name in enumerate(class_names)}
    model = model.to(context.device).eval()
    try:
        return fit_safety_gate(
            model,
            train_images=[decoded_images.open(s.path) for s in split["train"]],
            train_labels=[index[s.label] for s in split["train"]],
            val_images=[decoded_images.open(s.path) for s in split["val"]],
            num_classes=len(class_names),
            spec=spec,
            batch_size=batch_size,
        )
    finally:
        model.cpu()


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
) -> Path:
    """Calibrate on the validation split, write final.pt and export the bundle (rank 0). Returns the
    bundle directory (on every rank, after the others waited for it)."""
    target = bundle_dir(out_dir, fold, role)
    if context.is_main:
        class_names = class_set_names(config.data.classes)
        spec = stage_spec(stage)
        loader = eval_loader(split["val"], class_names, spec, stage.eval_batch_size, config.data.num_workers)
        logits, labels = evaluate_logits(result.model.to(context.device), loader, device=context.device)
        result.model.cpu()
        calibration = {"temperature": 1.0, "fitted_on": "validation"}
        before = expected_calibration_error(softmax(logits), labels)
        temperature = fit_temperature(logits, labels) if config.calibrate else 1.0
        calibration.update(
            temperature=temperature,
            ece_before=before,
            ece_after=expected_calibration_error(softmax(logits, temperature), labels),
        )
        validation = {
            "accuracy": float((logits.argmax(axis=1) == labels).mean()),
            "images": len(labels),
        }
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
            "metrics": {"validation": validation},
            "provenance": {**provenance(config, out_dir, fold, extra_provenance), "training": training},
            "golden_paths": _golden_paths(split["val"], config.golden_images),
        }
        safety = _fit_gate(result.model, split, class_names, spec, stage.eval_batch_size, context)
        checkpoint = save_checkpoint(work_dir(out_dir, fold, role) / FINAL_NAME, result.model, meta, safety)
        if target.exists():
            shutil.rmtree(target)  # a bundle from an interrupted earlier run of this same stage
        export_checkpoint(checkpoint, target)
        log.info(
            "%s fold %s: val accuracy %.3f, temperature %.3f (ECE %.3f -> %.3f), bundle %s",
            role, fold, validation["accuracy"], temperature, before, calibration["ece_after"], target,
        )  # fmt: skip
    context.barrier()
    return target
