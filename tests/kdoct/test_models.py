import pytest
import torch
from safetensors.torch import save_file

from kdoct.errors import ModelInitError
from kdoct.models import create_model


def test_creates_tiny_models_with_the_requested_head():
    model = create_model("test_efficientnet", 4).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ModelInitError, match="not supported: choose one of .*efficientnet_b2"):
        create_model("resnet50", 3)


def test_offline_hub_says_what_to_do(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import: kdoct re-reads it so the refusal is immediate.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelInitError, match=r"Offline\?.*model\.safetensors.*init"):
        create_model("test_efficientnet", 3, init="hub")


def test_init_from_imagenet_style_file_replaces_only_the_classifier(tmp_path):
    source = create_model("test_efficientnet", 1000)
    path = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("test_efficientnet", 3, init=path)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.classifier.weight.shape == (3, source.classifier.in_features)


def test_init_from_checkpoint_dict(tmp_path):
    source = create_model("test_convnext", 3)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": source.state_dict(), "epoch": 4}, path)
    model = create_model("test_convnext", 3, init=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_init_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "convnext.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create_model("test_convnext", 3).state_dict().items()}, str(path)
    )
    with pytest.raises(ModelInitError, match="does not fit the model"):
        create_model("test_efficientnet", 3, init=path)


def test_missing_init_file_is_named(tmp_path):
    with pytest.raises(ModelInitError, match=r"nope\.safetensors does not exist"):
        create_model("test_efficientnet", 3, init=tmp_path / "nope.safetensors")
