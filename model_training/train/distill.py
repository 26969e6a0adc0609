"""Online distillation: the student learns from the frozen teacher bundle of the SAME fold, which
sees the same augmented batch (each model normalised its own way), in eval mode, without gradients."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from kdoct.bundle import load_bundle
from kdoct.errors import BundleError
from kdoct.labels import class_names as class_set_names
from model_training.config import ExperimentConfig
from model_training.data.manifest import manifest_fingerprint
from model_training.layout import split_path, work_dir
from model_training.train.augment import normalise
from model_training.train.distributed import DistContext
from model_training.train.finish import finish_stage
from model_training.train.fit import StageRun, fit
from model_training.train.losses import distillation_loss
from model_training.train.stage_model import build_model, head_backbone_groups, stage_spec

__all__ = ["train_student"]

log = logging.getLogger(__name__)


def _describe(fold: int | None) -> str:
    return "the final split" if fold is None else f"fold {fold}"


def _frozen_teacher(
    teacher_dir: Path, fold: int | None, class_names, folds_fingerprint: str, device, channels_last
):
    bundle = load_bundle(teacher_dir)
    provenance = bundle.manifest.get("provenance", {})
    if tuple(bundle.class_names) != tuple(class_names):
        raise BundleError(
            f"{teacher_dir}: teacher classes {bundle.class_names} differ from {tuple(class_names)}"
        )
    # The reference code let a fold's student learn from a teacher trained on that fold's test
    # patients. Refuse any teacher not trained on exactly this fold of exactly these folds.
    if provenance.get("fold") != fold or provenance.get("folds_fingerprint") != folds_fingerprint:
        raise BundleError(
            f"{teacher_dir} was trained on {_describe(provenance.get('fold'))} of folds "
            f"{str(provenance.get('folds_fingerprint'))[:12]}…, not {_describe(fold)} of this run's split "
            f"({folds_fingerprint[:12]}…): train the teacher of this fold first"
        )
    model = bundle.model().to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return bundle, model


def train_student(
    config: ExperimentConfig,
    split: dict[str, list],
    out_dir: Path,
    fold: int | None,
    context: DistContext,
    *,
    teacher_dir: Path,
    alpha: float | None = None,
    role: str = "student",
    resume: bool = False,
    oof: dict | None = None,
) -> Path:
    """Distil the fold's teacher into the student; alpha=0 gives the no-distillation baseline with
    everything else identical. Returns the student's bundle directory."""
    stage = config.student if alpha is None else config.student.model_copy(update={"alpha": alpha})
    class_names = class_set_names(config.data.classes)
    spec = stage_spec(stage)
    device = context.device
    teacher_bundle, teacher = _frozen_teacher(
        teacher_dir, fold, class_names, manifest_fingerprint(split_path(out_dir, fold)), device,
        stage.channels_last,
    )  # fmt: skip
    teacher_spec = teacher_bundle.preprocess
    # The same augmented pixels for both (alpha 0 included, so the baseline differs only in the loss),
    # made at the larger of the two input sizes; `normalise` resizes them for the smaller model.
    augment_spec = teacher_spec if max(teacher_spec.input_size) > max(spec.input_size) else spec

    def loss_fn(model, images, targets):
        student_logits = model(normalise(images, spec))
        if stage.alpha == 0:
            return distillation_loss(student_logits, student_logits, targets, alpha=0.0), student_logits
        with torch.no_grad():
            teacher_logits = teacher(normalise(images, teacher_spec))
        loss = distillation_loss(student_logits, teacher_logits, targets, stage.alpha, stage.temperature)
        return loss, student_logits

    torch.manual_seed(config.seed + 1000 + (fold or 0))
    model = build_model(stage, len(class_names))
    run = StageRun(
        fold=fold,
        role=role,
        stage=stage,
        model=model,
        spec=spec,
        class_names=class_names,
        train_samples=split["train"],
        val_samples=split["val"],
        loss_fn=loss_fn,
        param_groups=head_backbone_groups(model, stage),
        out_dir=work_dir(out_dir, fold, role),
        context=context,
        seed=config.seed + (fold or 0),  # same augmented images as the teacher saw, epoch by epoch
        num_workers=config.data.num_workers,
        augment_spec=dataclasses.replace(augment_spec, channel_mode=spec.channel_mode),
    )
    result = fit(run, resume=resume)
    return finish_stage(
        result,
        config=config,
        stage=stage,
        role=role,
        bundle_role="student",
        split=split,
        out_dir=out_dir,
        fold=fold,
        context=context,
        extra_provenance={
            "teacher": {
                "name": teacher_bundle.name,
                "sha256": teacher_bundle.sha256,
                "arch": teacher_bundle.arch,
            },
            "alpha": stage.alpha,
            "temperature": stage.temperature,
        },
        oof=oof,
    )
