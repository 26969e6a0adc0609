"""The final checkpoint of a training stage (what `export` turns into a bundle).

Like nanoGPT's checkpoints it carries everything needed to rebuild the model (arch, class names,
preprocess spec) plus calibration, validation metrics, provenance and the golden image paths, so
export depends on nothing but this file. Only tensors and plain values: loaded with weights_only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdoct.bundle import Bundle
from kdoct.errors import BundleError
from kdoct.models import create_model
from kdoct.preprocess import PreprocessSpec
from model_training.data.dataset import open_image

__all__ = ["CHECKPOINT_FORMAT", "FINAL_NAME", "export_checkpoint", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kdoct-checkpoint-1"
FINAL_NAME = "final.pt"


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """meta: role, arch, class_names, preprocess (dict), name, version, calibration, metrics,
    provenance, golden_paths."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, **meta}, path)
    return path


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
    from model_training.export import export_bundle

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
    )
    log.info("exported %s to %s", checkpoint, out_dir)
    return bundle
