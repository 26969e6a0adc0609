"""Teacher training: focal loss with the fold's balanced class weights, head/backbone learning
rates, backbone freeze, warm-up + cosine, SWA; then calibration and export (see finish.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from kdoct.errors import DataError
from kdoct.labels import class_names as class_set_names
from model_training.config import ExperimentConfig, StageConfig
from model_training.layout import work_dir
from model_training.train.augment import mix_batch, normalise
from model_training.train.distributed import DistContext
from model_training.train.finish import finish_stage
from model_training.train.fit import StageRun, fit
from model_training.train.losses import focal_loss, soft_target_cross_entropy
from model_training.train.stage_model import build_model, head_backbone_groups, stage_spec

__all__ = ["balanced_class_weights", "train_teacher"]

log = logging.getLogger(__name__)


def balanced_class_weights(labels: list[str], class_names: tuple[str, ...]) -> torch.Tensor:
    """sklearn's 'balanced' weights n / (C * count_c) over the training split."""
    missing = [c for c in class_names if c not in set(labels)]
    if missing:
        raise DataError(
            f"the training split has no images of class(es) {missing}: cannot weight or learn them"
        )
    index = np.array([class_names.index(label) for label in labels])
    weights = compute_class_weight("balanced", classes=np.arange(len(class_names)), y=index)
    return torch.tensor(weights, dtype=torch.float32)


def teacher_loss(stage: StageConfig, spec, weight: torch.Tensor | None):
    def loss_fn(model, images, targets):
        logits = model(normalise(images, spec))
        if targets.is_floating_point():  # soft targets from mixup / cutmix (loss: ce only)
            return soft_target_cross_entropy(logits, targets), logits
        if stage.loss == "focal":
            return focal_loss(logits, targets, gamma=stage.focal_gamma, weight=weight), logits
        w = weight.to(logits.device) if weight is not None else None
        loss = F.cross_entropy(logits.float(), targets, weight=w, label_smoothing=stage.label_smoothing)
        return loss, logits

    return loss_fn


def train_teacher(
    config: ExperimentConfig,
    split: dict[str, list],
    out_dir: Path,
    fold: int | None,
    context: DistContext,
    *,
    resume: bool = False,
    on_epoch_end=None,
    oof: dict | None = None,
) -> Path:
    """Train, calibrate and export the fold's teacher; returns its bundle directory."""
    stage = config.teacher
    class_names = class_set_names(config.data.classes)
    spec = stage_spec(stage)
    torch.manual_seed(config.seed + (fold or 0))  # identical initial weights on every rank
    model = build_model(stage, len(class_names))
    weight = None
    if stage.class_weights == "balanced":
        weight = balanced_class_weights([s.label for s in split["train"]], class_names)
        log.info(
            "teacher fold %s class weights %s", fold, dict(zip(class_names, weight.tolist(), strict=True))
        )
    batch_transform = None
    if stage.mixup_alpha > 0 or stage.cutmix_alpha > 0:
        mix_rng = np.random.default_rng([config.seed, fold or 0, context.rank, 7])

        def batch_transform(images, targets):
            return mix_batch(
                images, targets, len(class_names), stage.mixup_alpha, stage.cutmix_alpha, mix_rng
            )

    run = StageRun(
        fold=fold,
        role="teacher",
        stage=stage,
        model=model,
        spec=spec,
        class_names=class_names,
        train_samples=split["train"],
        val_samples=split["val"],
        loss_fn=teacher_loss(stage, spec, weight),
        param_groups=head_backbone_groups(model, stage),
        out_dir=work_dir(out_dir, fold, "teacher"),
        context=context,
        seed=config.seed + (fold or 0),
        num_workers=config.data.num_workers,
        batch_transform=batch_transform,
        on_epoch_end=on_epoch_end,
    )
    result = fit(run, resume=resume)
    return finish_stage(
        result,
        config=config,
        stage=stage,
        role="teacher",
        bundle_role="teacher",
        split=split,
        out_dir=out_dir,
        fold=fold,
        context=context,
        extra_provenance={"class_weights": weight.tolist() if weight is not None else None},
        oof=oof,
    )
