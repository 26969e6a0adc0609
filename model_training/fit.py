"""The epoch loop shared by teacher and student: schedule, early stopping, checkpoint + resume, SWA,
per-epoch JSONL log. Stage-specific choices (loss, parameter groups) come in through `StageRun`."""

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
from torch.optim.swa_utils import SWALR, AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from kdoct.errors import DataError
from kdoct.preprocess import PreprocessSpec
from model_training.augment import TrainAugment, normalise
from model_training.config import StageConfig
from model_training.data.dataset import OCTDataset
from model_training.distributed import DistContext, broadcast_flag, unwrap
from model_training.engine import (
    LossFn,
    evaluate_logits,
    make_precision,
    recompute_batchnorm,
    train_one_epoch,
    warmup_cosine_schedule,
)

__all__ = ["FitResult", "StageRun", "eval_loader", "fit", "RESUME_NAME"]

log = logging.getLogger(__name__)

RESUME_NAME = "last.pt"
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


def eval_loader(
    samples: Sequence, class_names: Sequence[str], spec: PreprocessSpec, batch_size: int, workers=0
):
    dataset = OCTDataset(samples, class_names, spec=spec)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(targets)), targets].mean())


def _improved(stage: StageConfig, value: float, best: float, val_loss: float, best_val_loss: float) -> bool:
    """Better on the monitored figure. Validation accuracy on a few dozen patients moves in steps of
    one image and ties often; a tie goes to the lower validation loss (seen here: a tie between epochs
    1 and 3 of 4 kept epoch 1, whose validation loss was 0.23 against 0.18)."""
    if stage.monitor == "val_loss":
        return value < best
    return value > best or (value == best and val_loss < best_val_loss)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(run: StageRun, *, resume: bool = False) -> FitResult:
    stage, context = run.stage, run.context
    device = context.device
    if not run.train_samples or not run.val_samples:
        raise DataError(f"{run.role}: the training and validation splits must both be non-empty")
    run.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(run.seed + context.rank)  # dropout differs per rank; init was seeded by the caller

    model = run.model.to(device)
    if stage.channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = make_precision(device, stage.amp)
    ddp_model = context.wrap(model)

    train_set = OCTDataset(
        run.train_samples,
        run.class_names,
        augment=TrainAugment(stage.augment, run.augment_spec or run.spec),
        seed=run.seed,
    )
    if context.enabled:
        sampler = DistributedSampler(train_set, context.world_size, context.rank, shuffle=True, seed=run.seed)
        shuffle_generator = None
    else:
        shuffle_generator = torch.Generator()
        sampler = RandomSampler(train_set, generator=shuffle_generator)
    per_rank = len(train_set) // context.world_size
    train_loader = DataLoader(
        train_set,
        batch_size=stage.batch_size,
        sampler=sampler,
        num_workers=run.num_workers,
        # A last batch of one image breaks BatchNorm in train mode; drop it when there is a full batch.
        drop_last=per_rank > stage.batch_size,
        pin_memory=device.type == "cuda",
    )
    val_loader = eval_loader(
        run.val_samples, run.class_names, run.spec, stage.eval_batch_size, run.num_workers
    )

    groups = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in run.param_groups]
    optimizer = torch.optim.AdamW(groups, weight_decay=stage.weight_decay)
    steps_per_epoch = max(1, -(-len(train_loader) // stage.accum_steps))
    scheduler = warmup_cosine_schedule(
        optimizer,
        total_steps=steps_per_epoch * stage.epochs,
        warmup_steps=round(steps_per_epoch * stage.warmup_epochs),
        min_lrs=[g["min_lr"] for g in run.param_groups],
        frozen_steps=[steps_per_epoch * g.get("frozen_epochs", 0) for g in run.param_groups],
    )
    swa_model: AveragedModel | None = None
    swa_scheduler: SWALR | None = None

    def start_swa() -> None:
        nonlocal swa_model, swa_scheduler
        swa_model = AveragedModel(unwrap(model))
        anneal = max(1, min(10, stage.epochs - stage.swa.start_epoch))
        swa_scheduler = SWALR(optimizer, swa_lr=stage.swa.lr, anneal_epochs=anneal, anneal_strategy="cos")

    best_value = float("inf") if stage.monitor == "val_loss" else -float("inf")
    best_epoch, since_best, start_epoch = -1, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    resume_path = run.out_dir / RESUME_NAME
    if resume and resume_path.is_file():
        # Our own file, written below; it holds scheduler objects, hence weights_only=False.
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if precision.scaler is not None and state.get("scaler"):
            precision.scaler.load_state_dict(state["scaler"])
        if state.get("swa_model") is not None:
            start_swa()
            swa_model.load_state_dict(state["swa_model"])
            swa_scheduler.load_state_dict(state["swa_scheduler"])
        best_value, best_epoch, since_best = state["best_value"], state["best_epoch"], state["since_best"]
        best_state, history = state["best_state"], state["history"]
        start_epoch = state["epoch"] + 1
        _set_rng_state(state["rng"])
        log.info("%s: resumed from %s at epoch %d", run.role, resume_path, start_epoch)

    stopped_early = False
    for epoch in range(start_epoch, stage.epochs):
        in_swa = stage.swa.enabled and epoch >= stage.swa.start_epoch
        if in_swa and swa_model is None:
            start_swa()
        train_set.set_epoch(epoch)
        if shuffle_generator is not None:
            shuffle_generator.manual_seed(run.seed * 100_003 + epoch)
        else:
            sampler.set_epoch(epoch)

        train_stats = train_one_epoch(
            ddp_model,
            train_loader,
            optimizer,
            run.loss_fn,
            device=device,
            precision=precision,
            accum_steps=stage.accum_steps,
            scheduler=None if in_swa else scheduler,
            channels_last=stage.channels_last,
            batch_transform=run.batch_transform,
            progress=run.progress and context.is_main,
            description=f"{run.role} epoch {epoch + 1}/{stage.epochs}",
        )
        if in_swa:
            swa_model.update_parameters(unwrap(model))
            swa_scheduler.step()
        logits, targets = evaluate_logits(
            unwrap(model), val_loader, device=device, precision=precision, channels_last=stage.channels_last
        )
        val_loss = _cross_entropy(logits, targets)
        val_accuracy = float((logits.argmax(axis=1) == targets).mean())
        value = val_loss if stage.monitor == "val_loss" else val_accuracy
        best_val_loss = history[best_epoch]["val_loss"] if best_epoch >= 0 else float("inf")
        if _improved(stage, value, best_value, val_loss, best_val_loss):
            best_value, best_epoch, since_best = value, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        else:
            since_best += 1
        record = {
            "role": run.role,
            "fold": run.fold,
            "epoch": epoch,
            "train_loss": train_stats["loss"],
            "train_accuracy": train_stats["accuracy"],
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
            "swa": in_swa,
            "images_per_s": train_stats["images_per_s"] * context.world_size,
            "seconds": train_stats["seconds"],
            "precision": precision.name,
            "time": time.time(),
        }
        history.append(record)
        if run.on_epoch_end is not None:
            run.on_epoch_end(epoch, unwrap(model), in_swa)
        if context.is_main:
            with open(run.out_dir / LOG_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            torch.save(
                {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
                    "swa_model": swa_model.state_dict() if swa_model is not None else None,
                    "swa_scheduler": swa_scheduler.state_dict() if swa_scheduler is not None else None,
                    "epoch": epoch,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                    "since_best": since_best,
                    "best_state": best_state,
                    "history": history,
                    "rng": _rng_state(),
                },
                resume_path,
            )
            log.info(
                "%s epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f",
                run.role, epoch, train_stats["loss"], train_stats["accuracy"], val_loss, val_accuracy,
            )  # fmt: skip
        # Early stopping ends the run only before SWA starts: once averaging has begun it runs to the
        # end of its window, otherwise the average would depend on when validation noise peaked.
        stop = (not stage.swa.enabled or epoch < stage.swa.start_epoch) and since_best >= stage.patience
        if broadcast_flag(context, stop):
            stopped_early = True
            log.info("%s: early stop at epoch %d (best %d)", run.role, epoch, best_epoch)
            break

    swa_epochs = sum(1 for h in history if h["swa"])
    if swa_model is not None and swa_epochs:
        final = swa_model.module
        recompute_batchnorm(
            final,
            train_loader,
            lambda images: normalise(images, run.spec),
            device=device,
            channels_last=stage.channels_last,
        )
        selected = "swa"
    elif stage.export_weights == "last" and not stage.swa.enabled:
        final = unwrap(model)
        selected = "last_epoch"
    else:
        if stage.swa.enabled:
            log.warning("%s: stopped before SWA started; using the best checkpoint", run.role)
        final = unwrap(model)
        final.load_state_dict(best_state)
        selected = "best_checkpoint"
    final = copy.deepcopy(final).float().cpu().eval().to(memory_format=torch.contiguous_format)
    return FitResult(
        model=final,
        history=history,
        best_epoch=best_epoch,
        best_value=best_value,
        swa_epochs=swa_epochs,
        stopped_early=stopped_early,
        selected=selected,
        precision=precision.name,
    )
