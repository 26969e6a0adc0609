"""Seeded augmentation, per-model normalisation, and the dataset's handling of bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdoct.errors import DataError
from kdoct.preprocess import PreprocessSpec, preprocess_array
from model_training.config import AugmentConfig
from model_training.data.dataset import OCTDataset
from model_training.data.manifest import Sample
from model_training.train.augment import TrainAugment, image_to_unit_tensor, mix_batch, normalise

SPEC = PreprocessSpec(input_size=(48, 48))


@pytest.fixture(scope="module")
def scan(sample_jpegs) -> Image.Image:
    with Image.open(sample_jpegs["DRUSEN"][0]) as image:
        image.load()
        return image.resize((128, 124))


def test_same_seed_gives_the_same_augmented_tensor(scan):
    augment = TrainAugment(AugmentConfig(), SPEC)
    first = augment(scan, np.random.default_rng([7, 0, 3]))
    again = augment(scan, np.random.default_rng([7, 0, 3]))
    other = augment(scan, np.random.default_rng([7, 1, 3]))
    assert first.shape == (3, 48, 48) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])  # gray3


def test_dataset_items_are_reproducible_per_epoch(scan, tmp_path):
    path = tmp_path / "scan.png"
    scan.save(path)
    samples = [Sample(str(path), "drusen", "p1")]

    def make() -> OCTDataset:
        return OCTDataset(
            samples, ("normal", "drusen", "cnv"), augment=TrainAugment(AugmentConfig(), SPEC), seed=5
        )

    a, b = make(), make()
    assert torch.equal(a[0][0], b[0][0]) and a[0][1] == 1
    b.set_epoch(1)
    assert not torch.equal(a[0][0], b[0][0])


def test_without_augmentation_training_pixels_match_the_eval_transform(scan):
    """With every random op off and no crop margin, training sees what evaluation and serving see."""
    off = AugmentConfig(
        resize_ratio=1.0, randaug_ops=0, rotation=0, shear=0, scale=(1.0, 1.0), brightness=0, contrast=0,
        saturation=0, hflip=0, vflip=0, blur_p=0, posterize_p=0, erasing_p=0,
    )  # fmt: skip
    unit = TrainAugment(off, SPEC)(scan, np.random.default_rng(0))
    trained = normalise(unit[None], SPEC)[0].numpy()
    served = preprocess_array(scan, SPEC)
    assert np.abs(trained - served).max() < 0.06  # PIL vs torch bilinear resampling differ slightly


def test_normalise_applies_each_models_mean_and_std():
    batch = torch.rand(2, 3, 16, 16)
    other = PreprocessSpec(input_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(normalise(batch, other), (batch - 0.5) / 0.25)
    assert normalise(batch, PreprocessSpec(input_size=(8, 8))).shape == (2, 3, 8, 8)


def test_sixteen_bit_scans_keep_their_depth():
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    tensor = image_to_unit_tensor(Image.fromarray(pixels), "gray3")
    assert tensor.shape == (1, 64, 64)
    assert float(tensor.max()) == pytest.approx(pixels.max() / 65535, rel=1e-5)


def test_mixup_targets_are_probabilities():
    images, targets = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft = mix_batch(images, targets, 3, 0.4, 1.0, np.random.default_rng(0))
    assert mixed.shape == images.shape
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))


def test_unreadable_image_is_an_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = OCTDataset([Sample(str(broken), "cnv", "p9")], ("normal", "drusen", "cnv"), spec=SPEC)
    with pytest.raises(DataError, match="broken.jpeg"):
        dataset[0]


def test_labels_outside_the_class_set_are_refused(tmp_path):
    with pytest.raises(DataError, match="dme"):
        OCTDataset([Sample(str(tmp_path / "x.png"), "dme", "p1")], ("normal", "drusen", "cnv"), spec=SPEC)
