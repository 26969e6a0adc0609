"""Experiment configuration: YAML -> typed, frozen dataclasses, checked once at start-up.

YAML is read with `yaml.safe_load`, so a config can never execute code. Unknown keys are refused
(a typo must not silently fall back to a default), and settings that cannot take effect together
(mixup with focal loss, SWA starting after the last epoch, ...) raise `ConfigError` before any
training starts. Relative paths are resolved against the current directory (run from the repo root).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdoct.errors import ConfigError
from kdoct.labels import CLASS_SETS

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ExperimentConfig",
    "StageConfig",
    "SyntheticConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; defaults are the KD-OCT teacher's (REFERENCE.md)."""

    resize_ratio: float = 416 / 384  # resize to input*ratio, then random crop to input
    randaug_ops: int = 2  # ops drawn from brightness, contrast, sharpness, rotate, translate
    randaug_magnitude: float = 0.5  # 0..1 fraction of each op's range
    randaug_rotate: float = 9.0
    randaug_translate: float = 0.1
    rotation: float = 20.0
    shear: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2  # no effect on gray OCT; kept so the paper's ColorJitter reads the same
    hflip: float = 0.5
    vflip: float = 0.3
    blur_p: float = 0.2
    posterize_p: float = 0.2
    posterize_bits: int = 4
    erasing_p: float = 0.25
    erasing_scale: tuple[float, float] = (0.02, 0.15)


@dataclass(frozen=True)
class SwaConfig:
    enabled: bool = False
    start_epoch: int = 100  # first epoch (0-based) whose weights enter the average
    lr: float = 1e-5


@dataclass(frozen=True)
class StageConfig:
    """One model's training: the teacher (focal loss) or the student (distillation)."""

    arch: str
    # None (random), "package" (ImageNet weights an installed package ships), "hub", or a local file
    init: str | None = None
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    # None: the architecture's own (timm's pretrained config), like its mean and std, which always are
    input_size: int | None = None
    interpolation: Literal["bilinear", "bicubic"] | None = None
    channel_mode: Literal["gray3", "rgb"] = "gray3"
    epochs: int = 150
    batch_size: int = 16
    accum_steps: int = 1
    lr_head: float = 1e-4
    lr_backbone: float = 2e-5
    min_lr_head: float = 1e-7
    min_lr_backbone: float = 1e-7
    weight_decay: float = 0.05
    warmup_epochs: float = 0
    freeze_epochs: int = 0  # backbone frozen (head only) for this many epochs
    # The stem and the first N stages never train: their ImageNet filters (edges, textures) are kept,
    # and backpropagation stops before the highest-resolution layers, the costliest on a CPU.
    frozen_stages: int = 0
    loss: Literal["focal", "ce", "distill"] = "focal"
    focal_gamma: float = 2.0
    class_weights: Literal["balanced", "none"] = "balanced"
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    alpha: float = 0.7  # distillation: weight of the teacher term
    temperature: float = 4.0
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = 25
    # Without SWA: export the best checkpoint by `monitor`, or the last epoch's weights (what `final`
    # uses: its held-back slice calibrates and must not also choose the weights).
    export_weights: Literal["best", "last"] = "best"
    swa: SwaConfig = field(default_factory=SwaConfig)
    tta: bool = False
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a GradScaler
    channels_last: bool = True
    eval_batch_size: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class SyntheticConfig:
    patients: int = 24
    bscans_per_patient: int = 4
    size: tuple[int, int] = (512, 496)
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    classes: str = "neh3"
    layout: Literal["manifest", "kermany", "neh", "synthetic"] = "manifest"
    path: str | None = None  # manifest file (manifest) or dataset root (kermany, neh)
    folds: str | None = None  # a saved folds.csv; computed once from the data when absent
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    k: int = 5
    fold_seed: int = 43
    val_fraction: float = 0.2
    num_workers: int = 0
    # Decode every image once per run and keep it in memory (see data/image_cache.py).
    cache_images: bool = False
    # NEH only: keep only the B-scans whose Label equals their patient's Class, as the reference code
    # does before making folds ("worst-case filtering"); the paper's NEH figures are on that subset.
    neh_label_equals_class: bool = False


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    teacher: StageConfig
    student: StageConfig
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    folds_to_run: tuple[int, ...] | None = None  # None = every fold
    run_no_kd: bool = False  # also train the alpha=0 student (no-distillation baseline)
    calibrate: bool = True
    golden_images: int = 4
    version: str = "0.1.0"
    source_path: str | None = None  # the YAML file this came from (not a YAML key)


def _is_dataclass_type(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Check `value` against the annotation `kind` and convert it (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(kind)
    if _is_dataclass_type(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(kind, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(
            _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            # YAML 1.1 reads `2e-3` (no dot) as a string; it is clearly meant as a number.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {kind!r}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{where}: required setting(s) missing: {', '.join(missing)}")
    return cls(**kwargs)


def _check_stage(stage: StageConfig, where: str) -> None:
    if stage.epochs < 1:
        raise ConfigError(f"{where}.epochs must be at least 1, got {stage.epochs}")
    if stage.batch_size < 1 or stage.accum_steps < 1 or stage.eval_batch_size < 1:
        raise ConfigError(f"{where}: batch_size, eval_batch_size and accum_steps must be at least 1")
    if stage.input_size is not None and stage.input_size < 16:
        raise ConfigError(f"{where}.input_size must be at least 16 px, got {stage.input_size}")
    _check_init(stage, where)
    if stage.frozen_stages < 0:
        raise ConfigError(f"{where}.frozen_stages must be 0 or more, got {stage.frozen_stages}")
    if stage.frozen_stages and not stage.init:
        raise ConfigError(
            f"{where}.frozen_stages={stage.frozen_stages} with init: null would freeze random filters; "
            f"set an init (package, hub or a file) or frozen_stages: 0"
        )
    if stage.freeze_epochs and stage.freeze_epochs >= stage.epochs:
        raise ConfigError(
            f"{where}.freeze_epochs={stage.freeze_epochs} >= epochs={stage.epochs}: the backbone would never "
            f"train; lower freeze_epochs or raise epochs"
        )
    if stage.warmup_epochs < 0 or stage.warmup_epochs >= stage.epochs:
        raise ConfigError(
            f"{where}.warmup_epochs={stage.warmup_epochs} must be in [0, epochs={stage.epochs})"
        )
    if stage.swa.enabled and not 0 <= stage.swa.start_epoch < stage.epochs:
        raise ConfigError(
            f"{where}.swa.start_epoch={stage.swa.start_epoch} is not before epochs={stage.epochs}: SWA would "
            f"never average anything; lower swa.start_epoch or disable swa"
        )
    if (stage.mixup_alpha > 0 or stage.cutmix_alpha > 0) and stage.loss != "ce":
        raise ConfigError(
            f"{where}: mixup/cutmix need soft targets and only take effect with loss: ce, not "
            f"loss: {stage.loss}; set mixup_alpha and cutmix_alpha to 0 or use loss: ce"
        )
    if stage.label_smoothing and stage.loss == "focal":
        raise ConfigError(
            f"{where}: label_smoothing has no effect with focal loss; remove it or use loss: ce"
        )
    if not 0.0 <= stage.alpha <= 1.0 or stage.temperature <= 0:
        raise ConfigError(f"{where}: alpha must be in [0, 1] and temperature > 0")
    if min(stage.lr_head, stage.lr_backbone) <= 0:
        raise ConfigError(f"{where}: learning rates must be positive")
    scale = stage.augment.scale
    if not 0 < scale[0] <= scale[1] or stage.augment.resize_ratio < 1.0:
        raise ConfigError(f"{where}.augment: scale must be 0 < low <= high and resize_ratio >= 1")


def _check_init(stage: StageConfig, where: str) -> None:
    """Refuse at start-up what create_model would refuse after minutes of data preparation."""
    from kdoct.errors import ModelInitError
    from kdoct.models import check_architecture
    from kdoct.packaged_weights import PACKAGED_WEIGHTS

    try:
        name = check_architecture(stage.arch)
    except ModelInitError as exc:
        raise ConfigError(f"{where}.arch: {exc}") from None
    if stage.init == "package" and name not in PACKAGED_WEIGHTS:
        raise ConfigError(
            f"{where}.init: no package ships weights for {stage.arch}; `package` is available for "
            f"{', '.join(PACKAGED_WEIGHTS)} (or use null, hub or a weights file)"
        )
    if stage.init not in (None, "hub", "package") and not Path(stage.init).is_file():
        raise ConfigError(
            f"{where}.init: {stage.init!r} is neither null, hub, package nor an existing weights file"
        )


def _check(config: ExperimentConfig) -> None:
    if config.teacher.loss == "distill":
        raise ConfigError("teacher.loss: distill needs a teacher of its own; use focal or ce")
    if config.student.loss != "distill":
        raise ConfigError("student.loss must be distill (alpha: 0 gives the no-distillation baseline)")
    if config.student.freeze_epochs:
        raise ConfigError("student.freeze_epochs is not supported: the student trains end to end")
    _check_stage(config.teacher, "teacher")
    _check_stage(config.student, "student")
    data = config.data
    if data.classes not in CLASS_SETS:
        raise ConfigError(f"data.classes: {data.classes!r} is not one of {', '.join(CLASS_SETS)}")
    if data.layout != "synthetic" and not data.path and not data.folds:
        raise ConfigError(f"data.layout: {data.layout} needs data.path (or data.folds)")
    if data.k < 2:
        raise ConfigError(f"data.k must be at least 2, got {data.k}")
    if data.neh_label_equals_class and data.layout != "neh":
        raise ConfigError(
            f"data.neh_label_equals_class needs data.layout: neh (only the NEH release has a per-patient "
            f"Class beside the per-B-scan Label), not {data.layout}"
        )
    if not 0 < data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")
    if config.folds_to_run is not None:
        bad = [f for f in config.folds_to_run if not 0 <= f < data.k]
        if bad:
            raise ConfigError(f"folds_to_run {bad} outside 0..{data.k - 1}")
    if config.golden_images < 1:
        raise ConfigError("golden_images must be at least 1: export verifies ONNX on them")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "<config>"):
    """Build and check an ExperimentConfig from a mapping plus `key.sub=value` overrides (YAML values)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping")
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy through the same safe loader
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    config = _build(ExperimentConfig, data, source)
    config = dataclasses.replace(config, source_path=source)
    _check(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(data, overrides, source=str(path))


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict (tuples as lists), for provenance and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
