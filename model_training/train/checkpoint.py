"""A training stage's two checkpoints: the final one (what `export` turns into a bundle) and the
resume state written after every epoch (what lets an interrupted stage continue where it stopped).

The final checkpoint, like nanoGPT's, carries everything needed to rebuild the model (arch, class
names, preprocess spec) plus calibration, validation metrics, provenance and the golden image paths,
so export depends on nothing but this file. Only tensors and plain values: loaded with weights_only.

The resume state (`last.pt`) holds the model, optimiser, schedule, AMP scaler, SWA average and
schedule, the early-stopping record, the epoch history and the RNG states, so a resumed stage trains
the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import SWALR, AveragedModel

from kdoct.bundle import Bundle
from kdoct.errors import BundleError
from kdoct.models import create_model
from kdoct.preprocess import PreprocessSpec
from kdoct.safety import OodDetector, QualityBounds, SafetyGate
from model_training.data.dataset import open_image
from model_training.export.bundle_export import export_bundle

__all__ = [
    "CHECKPOINT_FORMAT",
    "FINAL_NAME",
    "RESUME_NAME",
    "TrainingState",
    "export_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kdoct-checkpoint-1"
FINAL_NAME = "final.pt"
RESUME_NAME = "last.pt"


def save_checkpoint(
    path: Path, model: nn.Module, meta: dict[str, Any], safety: SafetyGate | None = None
) -> Path:
    """meta: role, arch, class_names, preprocess (dict), name, version, calibration, metrics,
    provenance, golden_paths; `safety`: the model's fitted gate, exported with it."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if safety is None else {"safety": _gate_state(safety)}
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, **meta, **extra}, path)
    return path


def _gate_state(gate: SafetyGate) -> dict[str, Any]:
    """The gate as tensors and plain values (what torch.load(weights_only=True) reads back)."""
    return {
        "quality_low": torch.from_numpy(gate.quality.low.copy()),
        "quality_high": torch.from_numpy(gate.quality.high.copy()),
        "projection": torch.from_numpy(gate.ood.projection.copy()),
        "class_means": torch.from_numpy(gate.ood.class_means.copy()),
        "threshold": float(gate.ood.threshold),
        "summary": json.dumps(gate.summary),
    }


def _gate_from_state(state: dict[str, Any]) -> SafetyGate:
    return SafetyGate(
        quality=QualityBounds(low=state["quality_low"].numpy(), high=state["quality_high"].numpy()),
        ood=OodDetector(state["projection"].numpy(), state["class_means"].numpy(), float(state["threshold"])),
        summary=json.loads(state["summary"]),
    )


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a final checkpoint (eval mode, CPU) and return it with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise BundleError(f"{path} is not a readable kdoct checkpoint: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise BundleError(
            f"{path} is not a final kdoct checkpoint (format {CHECKPOINT_FORMAT}); pass the {FINAL_NAME} "
            f"that `teacher`/`distill` wrote, not {Path(path).name} from the middle of training"
        )
    model = create_model(data["arch"], len(data["class_names"]))
    model.load_state_dict(data.pop("state_dict"), strict=True)
    return model.eval(), data


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Bundle:
    """Export a final checkpoint as a verified bundle (ONNX checked on its golden validation images)."""
    model, meta = load_checkpoint(checkpoint)
    golden = [open_image(path) for path in meta["golden_paths"]]
    bundle = export_bundle(
        model,
        out_dir,
        name=meta["name"],
        version=meta["version"],
        role=meta["role"],
        arch=meta["arch"],
        class_names=meta["class_names"],
        preprocess=PreprocessSpec.from_dict(meta["preprocess"]),
        golden_images=golden,
        calibration=meta.get("calibration"),
        metrics=meta.get("metrics"),
        provenance=meta.get("provenance"),
        safety=_gate_from_state(meta["safety"]) if "safety" in meta else None,
    )
    log.info("exported %s to %s", checkpoint, out_dir)
    return bundle


@dataclass
class TrainingState:
    """What the epoch loop carries from one epoch to the next, and saves after each one for a resume.

    The SWA average and its learning-rate schedule exist only once SWA has started (`start_swa`).
    `model` is the bare module (not its DistributedDataParallel wrapper).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    scaler: torch.amp.GradScaler | None
    swa_lr: float
    swa_anneal_epochs: int
    best_value: float
    best_epoch: int = -1
    since_best: int = 0  # epochs since the monitored figure last improved
    best_state: dict[str, torch.Tensor] | None = None  # the best epoch's weights, on the CPU
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch trained
    swa_model: AveragedModel | None = None
    swa_scheduler: SWALR | None = None

    def start_swa(self) -> None:
        self.swa_model = AveragedModel(self.model)
        self.swa_scheduler = SWALR(
            self.optimizer, swa_lr=self.swa_lr, anneal_epochs=self.swa_anneal_epochs, anneal_strategy="cos"
        )

    def save(self, path: Path, epoch: int) -> None:
        """Write the state after `epoch` (0-based) has been trained."""
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "swa_model": self.swa_model.state_dict() if self.swa_model is not None else None,
                "swa_scheduler": self.swa_scheduler.state_dict() if self.swa_scheduler is not None else None,
                "epoch": epoch,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
                "best_state": self.best_state,
                "history": self.history,
                "rng": _rng_state(),
            },
            path,
        )

    def load(self, path: Path) -> int:
        """Restore everything `save` wrote, RNG states last; returns the first epoch still to train."""
        # Our own file, written by `save`; it holds scheduler objects, hence weights_only=False.
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("swa_model") is not None:
            self.start_swa()
            self.swa_model.load_state_dict(state["swa_model"])
            self.swa_scheduler.load_state_dict(state["swa_scheduler"])
        self.best_value, self.best_epoch, self.since_best = (
            state["best_value"], state["best_epoch"], state["since_best"],
        )  # fmt: skip
        self.best_state, self.history = state["best_state"], state["history"]
        _set_rng_state(state["rng"])
        return state["epoch"] + 1


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
