"""Experiment configuration: YAML -> typed, frozen pydantic models, checked once at start-up.

YAML is read with `yaml.safe_load`, so a config can never execute code. Unknown keys are refused
(a typo must not silently fall back to a default), and settings that cannot take effect together
(mixup with focal loss, SWA starting after the last epoch, ...) raise `ConfigError` before any
training starts. Relative paths are resolved against the current directory (run from the repo root).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from kdoct.errors import ConfigError, ModelInitError
from kdoct.labels import CLASS_SETS
from kdoct.models import check_architecture
from kdoct.packaged_weights import PACKAGED_WEIGHTS

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ExperimentConfig",
    "StageConfig",
    "SwaConfig",
    "SyntheticConfig",
    "config_to_dict",
    "load_config",
    "parse_config",
]


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads `2e-3` (no dot) as a string; a number setting takes it as the number it obviously is."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# Settings are validated strictly (a bool is not an integer, "ten" is not a number), with two
# exceptions YAML makes necessary: the string form of a number, and a list where a tuple is meant.
Number = Annotated[float, BeforeValidator(_yaml_number)]
FloatPair = Annotated[tuple[Number, Number], BeforeValidator(_list_to_tuple)]
IntPair = Annotated[tuple[int, int], BeforeValidator(_list_to_tuple)]
IntTuple = Annotated[tuple[int, ...], BeforeValidator(_list_to_tuple)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class AugmentConfig(_Settings):
    """Training augmentation; defaults are the KD-OCT paper's teacher recipe."""

    resize_ratio: Number = 416 / 384  # resize to input*ratio, then random crop to input
    randaug_ops: int = 2  # ops drawn from brightness, contrast, sharpness, rotate, translate
    randaug_magnitude: Number = 0.5  # 0..1 fraction of each op's range
    randaug_rotate: Number = 9.0
    randaug_translate: Number = 0.1
    rotation: Number = 20.0
    shear: Number = 15.0
    scale: FloatPair = (0.85, 1.15)
    brightness: Number = 0.3
    contrast: Number = 0.3
    saturation: Number = 0.2  # no effect on gray OCT; kept so the paper's ColorJitter reads the same
    hflip: Number = 0.5
    vflip: Number = 0.3
    blur_p: Number = 0.2
    posterize_p: Number = 0.2
    posterize_bits: int = 4
    erasing_p: Number = 0.25
    erasing_scale: FloatPair = (0.02, 0.15)


class SwaConfig(_Settings):
    enabled: bool = False
    start_epoch: int = 100  # first epoch (0-based) whose weights enter the average
    lr: Number = 1e-5


class StageConfig(_Settings):
    """One model's training: the teacher (focal loss) or the student (distillation)."""

    arch: str
    # None (random), "package" (ImageNet weights an installed package ships), "hub", or a local file
    init: str | None = None
    drop_rate: Number | None = None
    drop_path_rate: Number | None = None
    # None: the architecture's own (timm's pretrained config), like its mean and std, which always are
    input_size: int | None = None
    interpolation: Literal["bilinear", "bicubic"] | None = None
    channel_mode: Literal["gray3", "rgb"] = "gray3"
    epochs: int = 150
    batch_size: int = 16
    accum_steps: int = 1
    lr_head: Number = 1e-4
    lr_backbone: Number = 2e-5
    min_lr_head: Number = 1e-7
    min_lr_backbone: Number = 1e-7
    weight_decay: Number = 0.05
    warmup_epochs: Number = 0
    freeze_epochs: int = 0  # backbone frozen (head only) for this many epochs
    # The stem and the first N stages never train: their ImageNet filters (edges, textures) are kept,
    # and backpropagation stops before the highest-resolution layers, the costliest on a CPU.
    frozen_stages: int = 0
    loss: Literal["focal", "ce", "distill"] = "focal"
    focal_gamma: Number = 2.0
    class_weights: Literal["balanced", "none"] = "balanced"
    label_smoothing: Number = 0.0
    mixup_alpha: Number = 0.0
    cutmix_alpha: Number = 0.0
    alpha: Number = 0.7  # distillation: weight of the teacher term
    temperature: Number = 4.0
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = 25
    # Without SWA: export the best checkpoint by `monitor`, or the last epoch's weights (what `final`
    # uses: its held-back slice calibrates and must not also choose the weights).
    export_weights: Literal["best", "last"] = "best"
    swa: SwaConfig = Field(default_factory=SwaConfig)
    tta: bool = False
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a GradScaler
    channels_last: bool = True
    eval_batch_size: int = 32
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class SyntheticConfig(_Settings):
    patients: int = 24
    bscans_per_patient: int = 4
    size: IntPair = (512, 496)
    seed: int = 0


class DataConfig(_Settings):
    classes: str = "neh3"
    layout: Literal["manifest", "kermany", "neh", "synthetic"] = "manifest"
    path: str | None = None  # manifest file (manifest) or dataset root (kermany, neh)
    folds: str | None = None  # a saved folds.csv; computed once from the data when absent
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    k: int = 5
    fold_seed: int = 43
    val_fraction: Number = 0.2
    num_workers: int = 0
    # Decode every image once per run and keep it in memory (see data/image_cache.py).
    cache_images: bool = False
    # NEH only: keep only the B-scans whose Label equals their patient's Class, as the reference code
    # does before making folds ("worst-case filtering"); the paper's NEH figures are on that subset.
    neh_label_equals_class: bool = False


class ExperimentConfig(_Settings):
    name: str
    teacher: StageConfig
    student: StageConfig
    data: DataConfig = Field(default_factory=DataConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    folds_to_run: IntTuple | None = None  # None = every fold
    run_no_kd: bool = False  # also train the alpha=0 student (no-distillation baseline)
    calibrate: bool = True
    golden_images: int = 4
    version: str = "0.1.0"
    # The YAML file this came from: provenance, not a setting, so a YAML key of that name is refused.
    _source_path: str | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        # parse_config passes the path as validation context; model_copy keeps it.
        if isinstance(context, dict):
            self._source_path = context.get("source_path")

    @property
    def source_path(self) -> str | None:
        return self._source_path


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


def _dotted(loc: tuple[int | str, ...]) -> str:
    """('teacher', 'augment', 'scale', 1) -> 'teacher.augment.scale[1]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _section(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The settings class of the section that `loc` (a path of keys) names."""
    model: type[BaseModel] = ExperimentConfig
    for key in loc:
        model = model.model_fields[key].annotation
    return model


def _problem(error: dict[str, Any]) -> str:
    """One pydantic error as a sentence that names the dotted key."""
    loc = error["loc"]
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(_section(loc[:-1]).model_fields))
        where = f" in {_dotted(loc[:-1])}" if len(loc) > 1 else ""
        return f"unknown setting {key}; allowed{where}: {allowed}"
    if error["type"] == "missing":
        return f"required setting {key} is missing"
    return f"{key}: {error['msg']}, got {error['input']!r}"


def _nested(key: str, section: str) -> bool:
    """Whether dotted `key` is `section` or lies inside it."""
    return key == section or key.startswith((f"{section}.", f"{section}["))


def _config_error(exc: ValidationError, source: str, overrides: dict[str, str]) -> ConfigError:
    problems = []
    for error in exc.errors():
        problem = _problem(error)
        key = _dotted(error["loc"])
        given = [item for dotted, item in overrides.items() if _nested(key, dotted) or _nested(dotted, key)]
        if given:
            problem += f" (from --set {given[-1]})"
        problems.append(problem)
    return ConfigError(f"{source}: " + "; ".join(problems))


def parse_config(
    data: dict[str, Any], overrides: list[str] | None = None, source: str = "<config>"
) -> ExperimentConfig:
    """Build and check an ExperimentConfig from a mapping plus `key.sub=value` overrides (YAML values)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping")
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy through the same safe loader
    given: dict[str, str] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML: {exc}") from None
        _set_dotted(data, key.strip(), value)
        given[key.strip()] = item
    try:
        config = ExperimentConfig.model_validate(data, context={"source_path": source})
    except ValidationError as exc:
        raise _config_error(exc, source, given) from None
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
    """Plain JSON/YAML-safe dict (tuples as lists), for provenance and checkpoints; its last key,
    source_path, is the file the config was read from."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain({**config.model_dump(), "source_path": config.source_path})
