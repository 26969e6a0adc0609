"""Model construction over timm, with initial weights from a local file, a package that ships them
(`init: package`, see kdoct.packaged_weights) or, when online, the hub; and each architecture's own
preprocessing (timm's pretrained config), which the bundle then carries."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from kdoct.errors import ModelInitError
from kdoct.packaged_weights import load_packaged_state_dict

__all__ = [
    "ALLOWED_ARCHITECTURES",
    "INIT_SOURCES",
    "LogitsAndFeatures",
    "architecture_preprocess",
    "check_architecture",
    "create_model",
    "load_initial_weights",
]

# Besides these keywords, `init` may be the path of a local weights file.
INIT_SOURCES = ("hub", "package")

# The families KD-OCT uses, and timm's tiny test models for CPU tests. Others are refused so that a
# bundle can never name an architecture the service was not tested with.
ALLOWED_ARCHITECTURES = (
    "convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano", "convnextv2_tiny",
    "convnextv2_small", "convnextv2_base", "convnextv2_large", "convnextv2_huge",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "tf_efficientnet_lite3",
    "tf_efficientnet_lite4", "test_efficientnet", "test_convnext",
)  # fmt: skip


_OFFLINE_ADVICE = (
    "Offline? On a machine with internet, save timm/{arch}'s model.safetensors, copy it here and set "
    "its path as the stage's init in the config (`init: /path/model.safetensors`, or "
    "`--set teacher.init=/path/model.safetensors`); `init: package` gives ImageNet weights without a "
    "network for the architectures whose weights ship in a package (kdoct.packaged_weights)."
)


def architecture_preprocess(arch: str) -> dict:
    """The input size, interpolation, mean and std the architecture's ImageNet weights were trained
    with (timm's pretrained config): what a model initialised from them must be fed."""
    # deferred: timm takes seconds to import; check_architecture (every training command's config
    # check) and LogitsAndFeatures (export, the safety gate's fit) need none of it
    import timm

    name = check_architecture(arch)
    cfg = timm.models.get_pretrained_cfg(arch if "." in arch else name)
    if cfg is None:  # pragma: no cover - every allowed architecture has one
        raise ModelInitError(f"timm has no pretrained config for {arch!r}")
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bicubic"
    return {
        "input_size": int(cfg.input_size[-1]),
        "interpolation": interpolation,
        "mean": tuple(float(v) for v in cfg.mean),
        "std": tuple(float(v) for v in cfg.std),
    }


def check_architecture(arch: str) -> str:
    name = arch.split(".", 1)[0]
    if name not in ALLOWED_ARCHITECTURES:
        raise ModelInitError(
            f"architecture {arch!r} is not supported: choose one of {', '.join(ALLOWED_ARCHITECTURES)}"
        )
    return name


def create_model(
    arch: str,
    num_classes: int,
    init: str | Path | None = None,
    *,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """Build `arch` with a `num_classes` head.

    init: None (random weights), a local `.safetensors` / `.pt` / `.pth` file (ImageNet weights whose
    classifier is replaced, or a kdoct checkpoint), "package" (ImageNet weights an installed package
    ships, checked by sha256; see kdoct.packaged_weights) or "hub" (timm's pretrained weights, needs
    the network). Options left as None keep timm's defaults for the architecture.
    """
    import timm  # deferred: as in architecture_preprocess

    name = check_architecture(arch)
    if num_classes < 2:
        raise ModelInitError(f"num_classes must be at least 2, got {num_classes}")
    kwargs = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if init == "hub":
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise ModelInitError(
                f"pretrained weights for {arch!r} need the Hugging Face hub, but HF_HUB_OFFLINE is set. "
                f"{_OFFLINE_ADVICE.format(arch=arch)}"
            )
        try:
            return timm.create_model(arch, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every hub failure gets the same advice
            raise ModelInitError(
                f"could not download pretrained weights for {arch!r} from the Hugging Face hub ({exc}). "
                f"{_OFFLINE_ADVICE.format(arch=arch)}"
            ) from exc
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if init == "package":
        _load_packaged(model, name, num_classes)
    elif init is not None:
        load_initial_weights(model, Path(init))
    return model


def _load_packaged(model: nn.Module, name: str, num_classes: int) -> None:
    """The packaged ImageNet weights, every tensor but a classifier of another size."""
    import timm  # deferred: as in architecture_preprocess

    imagenet = timm.create_model(name, pretrained=False, num_classes=1000)
    state = load_packaged_state_dict(name, imagenet)
    if num_classes != 1000:
        classifier = model.pretrained_cfg["classifier"]
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(model.pretrained_cfg["classifier"] + ".") for k in missing):
        raise ModelInitError(f"packaged weights for {name} do not fit: missing {missing[:3]}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelInitError(
            f"initial weights file {path} does not exist: pass an existing .safetensors or .pt file, "
            f"'hub' when online, or nothing for random weights"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelInitError(f"cannot read initial weights {path}: {exc}") from exc
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ModelInitError(f"{path} holds no state dict")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def load_initial_weights(model: nn.Module, path: Path) -> None:
    """Load a backbone's weights; a classifier of another size (e.g. ImageNet's 1000) is left fresh."""
    state = _read_state_dict(path)
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ""
    skipped = []
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            if classifier and key.startswith(classifier):
                skipped.append(key)
                del state[key]
            else:
                raise ModelInitError(
                    f"{path}: weight {key} has shape {tuple(state[key].shape)}, the model expects "
                    f"{tuple(own[key].shape)}: is this file for another architecture?"
                )
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in skipped]
    backbone_missing = [k for k in missing if not (classifier and k.startswith(classifier))]
    if backbone_missing or unexpected:
        raise ModelInitError(
            f"{path} does not fit the model: {len(backbone_missing)} missing weights "
            f"(e.g. {backbone_missing[:3]}), {len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})"
        )


class LogitsAndFeatures(nn.Module):
    """A timm classifier with its penultimate features as a second output: (logits, features).

    The features are what the classifier layer sees (after pooling, and the head's norm where it has
    one), the input of the safety gate's out-of-distribution score (kdoct.safety). The logits are
    exactly the wrapped model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)
        return self.model.get_classifier()(features), features
