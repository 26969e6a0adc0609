import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.errors import PreprocessError
from kdoct.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec, eval_transform, preprocess_array

SPEC = PreprocessSpec(input_size=(96, 128))


def _expected_gray3(plane01: np.ndarray) -> np.ndarray:
    """Independent computation: repeat the [0, 1] plane on 3 channels, then (x - mean) / std."""
    mean = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.array(IMAGENET_STD).reshape(3, 1, 1)
    return ((np.stack([plane01] * 3) - mean) / std).astype(np.float32)


def test_real_8bit_jpeg_gives_normalised_3_channel_tensor(sample_jpegs):
    with Image.open(sample_jpegs["CNV"][0]) as image:
        assert image.mode == "L"
        array = preprocess_array(image, SPEC)
        resized = np.asarray(image.resize((128, 96), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    assert array.shape == (3, 96, 128) and array.dtype == np.float32
    np.testing.assert_allclose(array, _expected_gray3(resized), atol=1e-5)


def test_transform_is_deterministic_and_torch_wrapper_matches(sample_jpegs):
    with Image.open(sample_jpegs["DRUSEN"][0]) as image:
        first = preprocess_array(image, SPEC)
        second = preprocess_array(image, SPEC)
        tensor = eval_transform(SPEC)(image)
    assert np.array_equal(first, second)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert np.array_equal(tensor.numpy(), first)


def test_16bit_png_keeps_its_depth(tmp_path):
    rng = np.random.default_rng(0)
    plane = rng.integers(0, 65536, size=(96, 128), dtype=np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(plane).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        array = preprocess_array(image, SPEC)
    # Same size: no resampling, so the result is exactly the 16-bit value / 65535, normalised.
    np.testing.assert_allclose(array, _expected_gray3(plane / 65535.0), atol=1e-5)
    # Two 16-bit values that an 8-bit path would merge stay distinct.
    assert len(np.unique(array[0])) > 256


def test_rgb_and_palette_copies_of_a_grayscale_scan_give_the_same_tensor(sample_jpegs):
    with Image.open(sample_jpegs["NORMAL"][0]) as image:
        gray = preprocess_array(image, SPEC)
        rgb = preprocess_array(image.convert("RGB"), SPEC)
        palette = preprocess_array(image.convert("P"), SPEC)
    np.testing.assert_allclose(rgb, gray, atol=1e-6)
    # A palette of a gray image holds (almost) every gray level: at most one level off.
    assert np.abs(palette - gray).max() <= 1.5 / 255 / min(IMAGENET_STD)


def test_rgb_channel_mode_keeps_colour():
    image = Image.new("RGB", (128, 96), (255, 0, 0))
    array = preprocess_array(image, PreprocessSpec(input_size=(96, 128), channel_mode="rgb"))
    expected = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(array[:, 0, 0], expected, atol=1e-5)


def test_spec_round_trips_and_refuses_bad_values():
    spec = PreprocessSpec(input_size=(384, 384), interpolation="bicubic")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict({"input_size": 260}).input_size == (260, 260)
    with pytest.raises(PreprocessError, match="interpolation"):
        PreprocessSpec(interpolation="nearest")
    with pytest.raises(PreprocessError, match="std"):
        PreprocessSpec(std=(0.0, 1.0, 1.0))
    with pytest.raises(PreprocessError, match="unknown preprocess fields"):
        PreprocessSpec.from_dict({"input_size": 64, "crop_pct": 0.9})
