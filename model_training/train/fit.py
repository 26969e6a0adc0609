"""The epoch loop shared by teacher and student: schedule, early stopping, SWA, per-epoch JSONL log,
and the resume state saved after every epoch (checkpoint.TrainingState). Stage-specific choices (loss,
parameter groups) come in through `StageRun`."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from kdoct.errors import DataError
from kdoct.preprocess import PreprocessSpec
from kdoct.probabilities import log_softmax
from model_training.config import StageConfig
from model_training.data.dataset import OCTDataset, eval_loader
from model_training.evaluation.predict import evaluate_logits
from model_training.train.augment import TrainAugment, normalise
from model_training.train.checkpoint import RESUME_NAME, TrainingState
from model_training.train.distributed import DistContext, broadcast_flag, unwrap
from model_training.train.engine import (
    LossFn,
    make_precision,
    recompute_batchnorm,
    train_one_epoch,
    warmup_cosine_schedule,
)

__all__ = ["FitResult", "StageRun", "fit"]

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"


@dataclass
class StageRun:
    """Everything one training stage needs besides its StageConfig."""

    role: str
    fold: int | None  # None for a final model trained on every patient
    stage: StageConfig
    model: nn.Module
    spec: PreprocessSpec
    class_names: Sequence[str]
    train_samples: Sequence
    val_samples: Sequence
    loss_fn: LossFn  # (model, un-normalised images, targets) -> (loss, logits)
    param_groups: list[dict[str, Any]]  # each: params, lr, min_lr, frozen_epochs, name
    out_dir: Path
    context: DistContext
    seed: int = 0
    num_workers: int = 0
    batch_transform: Callable | None = None  # mixup / cutmix
    on_epoch_end: Callable[[int, nn.Module, bool], None] | None = None  # tests watch SWA with this
    progress: bool = True
    # The size the augmented training images are made at (default: the model's own spec). Distillation
    # augments at the teacher's input size when it is larger, so the teacher sees its native resolution
    # and the student a downsampled copy of the same pixels (loss_fn and `normalise` resize).
    augment_spec: PreprocessSpec | None = None


@dataclass
class FitResult:
    model: nn.Module  # the model to evaluate and export: SWA average or best checkpoint, CPU, eval
    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float
    swa_epochs: int
    stopped_early: bool
    selected: str  # "swa", "best_checkpoint" or "last_epoch"
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    log_probs = log_softmax(logits)
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def _improved(stage: StageConfig, value: float, best: float, val_loss: float, best_val_loss: float) -> bool:
    """Better on the monitored figure. Validation accuracy on a few dozen patients moves in steps of
    one image and ties often; a tie goes to the lower validation loss (seen here: a tie between epochs
    1 and 3 of 4 kept epoch 1, whose validation loss was 0.23 against 0.18)."""
    if stage.monitor == "val_loss":
        return value < best
    return value > best or (value == best and val_loss < best_val_loss)


@dataclass
class _TrainData:
    dataset: OCTDataset
    sampler: Sampler
    shuffle_generator: torch.Generator | None  # single process; DistributedSampler seeds itself
    loader: DataLoader

    def set_epoch(self, epoch: int, seed: int) -> None:
        """Augmentation and order depend only on (seed, epoch): a resumed run draws the same batches."""
        self.dataset.set_epoch(epoch)
        if self.shuffle_generator is not None:
            self.shuffle_generator.manual_seed(seed * 100_003 + epoch)
        else:
            self.sampler.set_epoch(epoch)


def _train_data(run: StageRun) -> _TrainData:
    stage, context = run.stage, run.context
    dataset = OCTDataset(
        run.train_samples,
        run.class_names,
        augment=TrainAugment(stage.augment, run.augment_spec or run.spec),
        seed=run.seed,
    )
    if context.enabled:
        sampler = DistributedSampler(dataset, context.world_size, context.rank, shuffle=True, seed=run.seed)
        shuffle_generator = None
    else:
        shuffle_generator = torch.Generator()
        sampler = RandomSampler(dataset, generator=shuffle_generator)
    per_rank = len(dataset) // context.world_size
    loader = DataLoader(
        dataset,
        batch_size=stage.batch_size,
        sampler=sampler,
        num_workers=run.num_workers,
        # A last batch of one image breaks BatchNorm in train mode; drop it when there is a full batch.
        drop_last=per_rank > stage.batch_size,
        pin_memory=context.device.type == "cuda",
    )
    return _TrainData(dataset, sampler, shuffle_generator, loader)


def _training_state(run: StageRun, model: nn.Module, scaler, batches_per_epoch: int) -> TrainingState:
    """AdamW over the run's parameter groups, the warm-up + cosine schedule, and an empty record."""
    stage = run.stage
    groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in run.param_groups]
    optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    steps_per_epoch = max(1, -(-batches_per_epoch // stage.accum_steps))
    scheduler = warmup_cosine_schedule(
        optimizer,
        total_steps=steps_per_epoch * stage.epochs,
        warmup_steps=round(steps_per_epoch * stage.warmup_epochs),
        min_lrs=[g["min_lr"] for g in run.param_groups],
        frozen_steps=[steps_per_epoch * g.get("frozen_epochs", 0) for g in run.param_groups],
    )
    return TrainingState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        swa_lr=stage.swa.lr,
        swa_anneal_epochs=max(1, min(10, stage.epochs - stage.swa.start_epoch)),
        best_value=float("inf") if stage.monitor == "val_loss" else -float("inf"),
    )


def _track_best(state: TrainingState, stage: StageConfig, epoch: int, val_loss: float, val_accuracy: float):
    """Keep the best epoch's weights by the stage's monitor (early stopping counts epochs since)."""
    value = val_loss if stage.monitor == "val_loss" else val_accuracy
    best_val_loss = state.history[state.best_epoch]["val_loss"] if state.best_epoch >= 0 else float("inf")
    if _improved(stage, value, state.best_value, val_loss, best_val_loss):
        state.best_value, state.best_epoch, state.since_best = value, epoch, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
    else:
        state.since_best += 1


def fit(run: StageRun, *, resume: bool = False) -> FitResult:
    stage, context = run.stage, run.context
    device = context.device
    if not run.train_samples:
        raise DataError(f"{run.role}: the training split is empty")
    # A final model trained on every patient has no validation split: nothing may then depend on one
    # (no early stopping, no best checkpoint), its epochs are fixed by cross-validation.
    validated = bool(run.val_samples)
    if not validated and not (stage.export_weights == "last" and stage.patience > stage.epochs):
        raise DataError(
            f"{run.role}: without validation images the stage must export its last (or SWA) weights and "
            f"never stop early (export_weights: last, patience > epochs)"
        )
    run.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed + context.rank)  # dropout differs per rank; init was seeded by the caller

    model = run.model.to(device)
    if stage.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = make_precision(device, stage.amp)
    ddp_model = context.wrap(model)
    train = _train_data(run)
    val_loader = (
        eval_loader(run.val_samples, run.class_names, run.spec, stage.eval_batch_size, run.num_workers)
        if validated
        else None
    )
    state = _training_state(run, unwrap(model), precision.scaler, len(train.loader))
    resume_path = run.out_dir / RESUME_NAME
    start_epoch = 0
    if resume and resume_path.is_file():
        start_epoch = state.load(resume_path)
        log.info("%s: resumed from %s at epoch %d", run.role, resume_path, start_epoch)

    stopped_early = False
    for epoch in range(start_epoch, stage.epochs):
        in_swa = stage.swa.enabled and epoch >= stage.swa.start_epoch
        if in_swa and state.swa_model is None:
            state.start_swa()
        train.set_epoch(epoch, run.seed)

        train_stats = train_one_epoch(
            ddp_model,
            train.loader,
            state.optimizer,
            run.loss_fn,
            device=device,
            precision=precision,
            accum_steps=stage.accum_steps,
            scheduler=None if in_swa else state.scheduler,
            channels_last=stage.channels_last,
            batch_transform=run.batch_transform,
            progress=run.progress and context.is_main,
            description=f"{run.role} epoch {epoch + 1}/{stage.epochs}",
        )
        if in_swa:
            state.swa_model.update_parameters(state.model)
            state.swa_scheduler.step()
        val_loss = val_accuracy = None
        if val_loader is None:
            state.best_epoch = epoch  # no validation: the last epoch is the one exported
        else:
            logits, targets = evaluate_logits(
                state.model, val_loader, device=device, precision=precision, channels_last=stage.channels_last
            )
            val_loss = _cross_entropy(logits, targets)
            val_accuracy = float((logits.argmax(axis=1) == targets).mean())
            _track_best(state, stage, epoch, val_loss, val_accuracy)
        record = {
            "role": run.role,
            "fold": run.fold,
            "epoch": epoch,
            "train_loss": train_stats["loss"],
            "train_accuracy": train_stats["accuracy"],
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": {g["name"]: g["lr"] for g in state.optimizer.param_groups},
            "swa": in_swa,
            "images_per_s": train_stats["images_per_s"] * context.world_size,
            "seconds": train_stats["seconds"],
            "precision": precision.name,
            "time": time.time(),
        }
        state.history.append(record)
        if run.on_epoch_end is not None:
            run.on_epoch_end(epoch, state.model, in_swa)
        if context.is_main:
            with open(run.out_dir / LOG_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            state.save(resume_path, epoch)
            validation = "" if val_loss is None else f" | val loss {val_loss:.4f} acc {val_accuracy:.3f}"
            log.info(
                "%s epoch %d: train loss %.4f acc %.3f%s",
                run.role, epoch, train_stats["loss"], train_stats["accuracy"], validation,
            )  # fmt: skip
        # Early stopping ends the run only before SWA starts: once averaging has begun it runs to the
        # end of its window, otherwise the average would depend on when validation noise peaked.
        stop = (not stage.swa.enabled or epoch < stage.swa.start_epoch) and state.since_best >= stage.patience
        if broadcast_flag(context, stop):
            stopped_early = True
            log.info("%s: early stop at epoch %d (best %d)", run.role, epoch, state.best_epoch)
            break

    swa_epochs = sum(1 for h in state.history if h["swa"])
    final, selected = _final_model(run, state, swa_epochs, train.loader)
    return FitResult(
        model=final,
        history=state.history,
        best_epoch=state.best_epoch,
        best_value=state.best_value,
        swa_epochs=swa_epochs,
        stopped_early=stopped_early,
        selected=selected,
        precision=precision.name,
    )


def _final_model(
    run: StageRun, state: TrainingState, swa_epochs: int, train_loader: DataLoader
) -> tuple[nn.Module, str]:
    """The weights to evaluate and export (CPU, fp32, eval mode) and which they are."""
    stage = run.stage
    if state.swa_model is not None and swa_epochs:
        final = state.swa_model.module
        recompute_batchnorm(
            final,
            train_loader,
            lambda images: normalise(images, run.spec),
            device=run.context.device,
            channels_last=stage.channels_last,
        )
        selected = "swa"
    elif stage.export_weights == "last" and not stage.swa.enabled:
        final = state.model
        selected = "last_epoch"
    else:
        if stage.swa.enabled:
            log.warning("%s: stopped before SWA started; using the best checkpoint", run.role)
        final = state.model
        final.load_state_dict(state.best_state)
        selected = "best_checkpoint"
    final = copy.deepcopy(final).float().cpu().eval().to(memory_format=torch.contiguous_format)
    return final, selected
