"""`frozen_stages`: the stem and the first stages keep their initial weights and get no optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from kdoct.errors import ConfigError
from kdoct.models import create_model
from model_training.config import StageConfig, parse_config
from model_training.train.stage_model import build_model, freeze_early_stages, head_backbone_groups

CONFIGS = Path(__file__).resolve().parents[3] / "model_training" / "configs"


@pytest.fixture
def init_file(tmp_path):
    path = tmp_path / "init.safetensors"
    source = create_model("test_efficientnet", 1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path


def test_frozen_stages_keep_their_weights_through_training(init_file):
    stage = StageConfig(arch="test_efficientnet", init=str(init_file), frozen_stages=1, lr_backbone=1e-2)
    torch.manual_seed(0)
    model = build_model(stage, 3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv_stem.", "bn1.", "blocks.0.")) for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("blocks.1."))
    groups = head_backbone_groups(model, stage)
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in optimised for n, p in model.named_parameters() if n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in groups])
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert not torch.equal(after["blocks.1.0.conv_exp.weight"], before["blocks.1.0.conv_exp.weight"])


def test_convnext_freezes_its_stem_and_stages():
    model = create_model("test_convnext", 3)
    names = freeze_early_stages(model, 2, "test_convnext")
    assert names and all(n.startswith(("stem.", "stages.0.", "stages.1.")) for n in names)


def test_freezing_every_stage_or_random_filters_is_refused(init_file):
    with pytest.raises(ConfigError, match="freeze fewer"):
        freeze_early_stages(create_model("test_efficientnet", 3), 99, "test_efficientnet")
    smoke = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    smoke["student"]["frozen_stages"] = 2  # the smoke student starts from random weights
    with pytest.raises(ConfigError, match="student.frozen_stages=2 with init: null"):
        parse_config(smoke)
