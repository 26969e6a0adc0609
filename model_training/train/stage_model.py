"""A training stage's model: its preprocessing (the architecture's own, as the config adjusts it), the
model with its initial weights, a fresh head and its early stages frozen, and the optimiser's two
parameter groups (head and backbone learning rates). Both stages, and the throughput measurement,
build their models here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdoct.errors import ConfigError, DataError
from kdoct.models import INIT_SOURCES, architecture_preprocess, create_model, load_initial_weights
from kdoct.preprocess import PreprocessSpec
from model_training.config import StageConfig

__all__ = ["build_model", "freeze_early_stages", "head_backbone_groups", "stage_spec"]


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


def head_backbone_groups(model: nn.Module, stage: StageConfig) -> list[dict]:
    """Two AdamW groups: the classifier (timm's pretrained_cfg['classifier']) and everything else that
    trains (parameters frozen by `frozen_stages` are left out)."""
    prefix = model.pretrained_cfg.get("classifier", "") if hasattr(model, "pretrained_cfg") else ""
    head, backbone = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if prefix and name.startswith(prefix) else backbone).append(parameter)
    if not head:
        raise DataError(f"{stage.arch}: could not find the classifier parameters (prefix {prefix!r})")
    return [
        {
            "name": "head",
            "params": head,
            "lr": stage.lr_head,
            "min_lr": stage.min_lr_head,
            "frozen_epochs": 0,
        },
        {
            "name": "backbone",
            "params": backbone,
            "lr": stage.lr_backbone,
            "min_lr": stage.min_lr_backbone,
            "frozen_epochs": stage.freeze_epochs,
        },
    ]
