"""Configs: every shipped YAML loads; impossible or unknown settings are refused at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kdoct.errors import ConfigError
from model_training.config import StageConfig, config_to_dict, load_config, parse_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "model_training" / "configs"


def _smoke() -> dict:
    return yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", ["smoke", "neh_paper", "ucsd_paper", "oct2017_sample"])
def test_shipped_configs_load(name):
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config.student.loss == "distill" and config.teacher.loss in ("focal", "ce")


def test_paper_configs_hold_the_papers_hyperparameters():
    config = load_config(CONFIG_DIR / "neh_paper.yaml")
    teacher, student = config.teacher, config.student
    assert (teacher.arch, teacher.input_size, teacher.drop_rate, teacher.drop_path_rate) == (
        "convnextv2_large", 384, 0.3, 0.3,
    )  # fmt: skip
    assert (teacher.lr_head, teacher.lr_backbone, teacher.weight_decay) == (1e-4, 2e-5, 0.05)
    assert (teacher.freeze_epochs, teacher.warmup_epochs, teacher.epochs, teacher.patience) == (
        5,
        10,
        150,
        25,
    )
    assert (teacher.batch_size, teacher.accum_steps, teacher.loss, teacher.focal_gamma) == (
        4,
        4,
        "focal",
        2.0,
    )
    assert (teacher.swa.enabled, teacher.swa.start_epoch, teacher.swa.lr) == (True, 100, 1e-5)
    assert (student.arch, student.input_size, student.lr_head, student.weight_decay) == (
        "efficientnet_b2", 384, 1e-3, 0.01,
    )  # fmt: skip
    assert (student.alpha, student.temperature, student.batch_size, student.accum_steps) == (0.7, 4.0, 8, 2)
    assert (student.epochs, student.warmup_epochs, student.patience, student.monitor) == (
        100, 5, 20, "val_accuracy",
    )  # fmt: skip
    assert (config.data.k, config.data.val_fraction) == (5, 0.2)
    # The paper's NEH figures are on the reference code's Label == Class subset; UCSD has no such column.
    assert config.data.neh_label_equals_class is True
    assert load_config(CONFIG_DIR / "ucsd_paper.yaml").data.neh_label_equals_class is False
    for name in ("neh_paper", "ucsd_paper"):
        paper = load_config(CONFIG_DIR / f"{name}.yaml")
        assert (paper.teacher.init, paper.student.init) == ("hub", "hub")
        assert (paper.teacher.arch, paper.student.arch) == ("convnextv2_large", "efficientnet_b2")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"teacher": {"mixup_alpha": 0.2}}, "mixup/cutmix"),
        ({"teacher": {"cutmix_alpha": 1.0}}, "mixup/cutmix"),
        ({"teacher": {"swa": {"enabled": True, "start_epoch": 3}}}, "swa.start_epoch"),
        ({"teacher": {"freeze_epochs": 3}}, "freeze_epochs"),
        ({"teacher": {"label_smoothing": 0.1}}, "label_smoothing"),
        ({"teacher": {"loss": "distill"}}, "teacher.loss"),
        ({"student": {"loss": "focal"}}, "student.loss"),
        ({"student": {"alpha": 1.5}}, "alpha"),
        ({"teacher": {"lerning_rate": 0.1}}, "lerning_rate"),
        ({"teacher": {"augment": {"hflips": 0.5}}}, "hflips"),
        ({"extra_section": {}}, "extra_section"),
        ({"teacher": {"epochs": "ten"}}, "teacher.epochs"),
        ({"teacher": {"amp": "yes"}}, "teacher.amp"),
        ({"teacher": {"epochs": True}}, "teacher.epochs: Input should be a valid integer, got True"),
        ({"teacher": {"lr_head": "fast"}}, "teacher.lr_head: Input should be a valid number, got 'fast'"),
        ({"teacher": {"augment": {"scale": [0.9, "x"]}}}, "teacher.augment.scale[1]"),
        ({"data": {"synthetic": {"size": [128]}}}, "data.synthetic.size"),
        ({"folds_to_run": [0, 1.0]}, "folds_to_run[1]"),
        ({"teacher": {"swa": {"enabled": 1}}}, "teacher.swa.enabled"),
        ({"teacher": {"interpolation": "nearest"}}, "teacher.interpolation"),
        ({"source_path": "elsewhere.yaml"}, "unknown setting source_path"),
        ({"data": {"layout": "somewhere"}}, "data.layout"),
        ({"data": {"k": 1}}, "data.k"),
        ({"student": {"init": "package"}}, "no package ships weights for test_efficientnet"),
        ({"teacher": {"init": "/nowhere/weights.safetensors"}}, "neither null, hub, package nor"),
        ({"teacher": {"arch": "resnet50"}}, "teacher.arch"),
        ({"data": {"neh_label_equals_class": True}}, "needs data.layout: neh"),
    ],
)
def test_refused_settings_name_the_problem(override, message):
    data = _smoke()
    for section, values in override.items():
        if isinstance(data.get(section), dict) and isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict) and isinstance(data[section].get(key), dict):
                    data[section][key].update(value)
                else:
                    data[section][key] = value
        else:
            data[section] = values
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, source="smoke.yaml")


def test_mixup_is_accepted_with_cross_entropy():
    data = _smoke()
    data["teacher"].update(loss="ce", mixup_alpha=0.2)
    assert parse_config(data).teacher.mixup_alpha == 0.2


def test_overrides_are_typed_and_checked():
    config = load_config(CONFIG_DIR / "smoke.yaml", ["teacher.epochs=5", "folds_to_run=[1]"])
    assert config.teacher.epochs == 5 and config.folds_to_run == (1,)
    # YAML 1.1 reads 2e-3 as a string; a number setting takes it as the number it obviously is.
    assert load_config(CONFIG_DIR / "smoke.yaml", ["teacher.lr_head=2e-3"]).teacher.lr_head == 0.002
    with pytest.raises(ConfigError, match="teacher.epochs"):
        load_config(CONFIG_DIR / "smoke.yaml", ["teacher.epochs=2.5"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIG_DIR / "smoke.yaml", ["teacher.epochs"])


def test_unknown_setting_is_named_with_the_keys_its_section_allows():
    data = _smoke()
    data["student"]["augment"]["hflips"] = 0.5
    with pytest.raises(ConfigError) as refused:
        parse_config(data, source="smoke.yaml")
    message = str(refused.value)
    assert message.startswith(
        "smoke.yaml: unknown setting student.augment.hflips; allowed in student.augment:"
    )
    assert "hflip," in message and "vflip" in message


def test_every_wrong_setting_is_reported_at_once():
    data = _smoke()
    data["teacher"]["epochs"] = "ten"
    data["student"]["amp"] = "yes"
    with pytest.raises(ConfigError, match=r"teacher\.epochs: .*; student\.amp: "):
        parse_config(data, source="smoke.yaml")


def test_set_overrides_are_validated_like_the_file_and_named():
    smoke = CONFIG_DIR / "smoke.yaml"
    with pytest.raises(
        ConfigError, match=r"teacher\.swa\.enabled: .*\(from --set teacher\.swa\.enabled=maybe\)"
    ):
        load_config(smoke, ["teacher.swa.enabled=maybe"])
    with pytest.raises(ConfigError, match=r"unknown setting teacher\.lerning_rate.*from --set"):
        load_config(smoke, ["teacher.lerning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"unknown setting optimiser.*from --set optimiser\.lr=1"):
        load_config(smoke, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match=r"--set teacher\.epochs\.max: epochs is not a section"):
        load_config(smoke, ["teacher.epochs.max=3"])
    with pytest.raises(ConfigError, match=r"--set teacher\.epochs=\[: the value is not valid YAML"):
        load_config(smoke, ["teacher.epochs=["])
    # The cross-field checks see the overridden values too.
    with pytest.raises(ConfigError, match=r"teacher\.swa\.start_epoch"):
        load_config(smoke, ["teacher.swa.start_epoch=7"])


def test_numbers_are_floats_and_lists_become_tuples():
    data = _smoke()
    data["teacher"].update(lr_head="2e-3", warmup_epochs=1)
    data["folds_to_run"] = [1]
    config = parse_config(data)
    assert config.teacher.lr_head == 0.002 and isinstance(config.teacher.lr_head, float)
    assert config.teacher.warmup_epochs == 1.0 and isinstance(config.teacher.warmup_epochs, float)
    assert config.folds_to_run == (1,) and config.data.synthetic.size == (128, 124)
    assert config.student.augment.scale == (1.0, 1.0)


def test_configs_are_frozen_and_copies_keep_their_source():
    config = load_config(CONFIG_DIR / "smoke.yaml")
    with pytest.raises(ValidationError):
        config.teacher.epochs = 4  # type: ignore[misc]
    copy = config.model_copy(update={"teacher": config.teacher.model_copy(update={"epochs": 4})})
    assert copy.teacher.epochs == 4 and config.teacher.epochs == 3
    assert copy.source_path == config.source_path == str(CONFIG_DIR / "smoke.yaml")


def test_config_dict_is_plain_and_reads_back_as_the_same_config():
    config = load_config(CONFIG_DIR / "smoke.yaml", ["folds_to_run=[0, 1]"])
    data = config_to_dict(config)
    assert list(data)[-1] == "source_path" and data["source_path"] == str(CONFIG_DIR / "smoke.yaml")
    assert data["folds_to_run"] == [0, 1] and data["student"]["augment"]["scale"] == [1.0, 1.0]
    assert data["teacher"]["swa"] == {"enabled": True, "start_epoch": 2, "lr": 1e-3}
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain values only
    source = data.pop("source_path")
    assert parse_config(data, source=source) == config


def test_yaml_cannot_execute_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_preprocessing_comes_from_the_architecture_and_the_bundle_carries_it():
    from model_training.train.stage_model import stage_spec

    config = load_config(CONFIG_DIR / "oct2017_sample.yaml")
    teacher, student = stage_spec(config.teacher), stage_spec(config.student)
    # EfficientNet-Lite's ImageNet weights were trained on [-1, 1] inputs, not ImageNet mean/std.
    assert teacher.mean == teacher.std == student.mean == student.std == (0.5, 0.5, 0.5)
    assert teacher.interpolation == student.interpolation == "bicubic"
    assert (config.teacher.init, config.student.init) == ("package", "package")
    # An input size left out is the architecture's own; ImageNet-mean models keep theirs.
    native = stage_spec(StageConfig(arch="tf_efficientnet_lite2", init="package"))
    assert native.input_size == (260, 260)
    paper = stage_spec(load_config(CONFIG_DIR / "neh_paper.yaml").student)
    assert paper.input_size == (384, 384) and paper.mean == (0.485, 0.456, 0.406)
