"""The decoded-image cache: each image decoded once per run, never changed by the transforms."""

from __future__ import annotations

import numpy as np
import pytest

from kdoct.errors import DataError
from kdoct.preprocess import PreprocessSpec, preprocess_array
from model_training.config import AugmentConfig
from model_training.data.image_cache import DecodedImageCache
from model_training.train.augment import TrainAugment


@pytest.fixture
def cache():
    return DecodedImageCache()


def test_enabled_cache_decodes_each_file_once(cache, sample_jpegs):
    paths = [str(p) for p in sample_jpegs["DRUSEN"][:5]]
    cache.enable()
    cache.fill(paths + paths[:2])  # a path listed twice is decoded once
    assert cache.decodes == 5 and len(cache) == 5
    first = cache.open(paths[0])
    assert cache.open(paths[0]) is first and cache.decodes == 5
    cache.enable(False)
    assert len(cache) == 0
    # Disabled, every open decodes afresh: nothing is kept.
    assert cache.open(paths[0]) is not cache.open(paths[0]) and len(cache) == 0


def test_cached_images_are_not_modified_by_augmentation_or_preprocessing(cache, sample_jpegs):
    cache.enable()
    path = str(sample_jpegs["CNV"][0])
    image = cache.open(path)
    before = np.asarray(image).copy()
    augment = TrainAugment(AugmentConfig(), PreprocessSpec(input_size=(96, 96)))
    for seed in range(3):
        augment(image, np.random.default_rng(seed))
    preprocess_array(image, PreprocessSpec(input_size=(96, 96)))
    assert np.array_equal(np.asarray(cache.open(path)), before)


def test_an_unreadable_file_is_named(cache, tmp_path):
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    cache.enable()
    with pytest.raises(DataError, match="broken.jpeg"):
        cache.fill([str(broken)])
