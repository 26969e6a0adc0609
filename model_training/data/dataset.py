"""A torch Dataset over manifest Samples: training (seeded augmentation) or evaluation (kdoct's transform),
and the evaluation DataLoader every prediction goes through."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kdoct.errors import DataError
from kdoct.preprocess import PreprocessSpec, eval_transform
from model_training.data.image_cache import decoded_images, open_image

__all__ = ["OCTDataset", "eval_loader", "open_image"]


class OCTDataset(Dataset):
    """(tensor (3, H, W), class index) pairs.

    With `augment` (a callable image, numpy Generator -> tensor in [0, 1]) the sample's Generator is
    seeded from (seed, epoch, index): reproducible whatever the number of workers or processes.
    Without it, the tensor is kdoct's eval transform of `spec` (already normalised).
    """

    def __init__(
        self,
        samples: Sequence,
        class_names: Sequence[str],
        *,
        spec: PreprocessSpec | None = None,
        augment: Callable[[Image.Image, np.random.Generator], torch.Tensor] | None = None,
        seed: int = 0,
    ):
        if augment is None and spec is None:
            raise ValueError("OCTDataset needs a spec (evaluation) or an augment callable (training)")
        self.samples = list(samples)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({s.label for s in self.samples} - set(self.class_index))
        if unknown:
            raise DataError(f"labels {unknown} are not in the class set {list(class_names)}")
        self.augment = augment
        self.transform = eval_transform(spec) if spec is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def targets(self) -> list[int]:
        return [self.class_index[s.label] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        image = decoded_images.open(sample.path)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            tensor = self.augment(image, rng)
        else:
            tensor = self.transform(image)
        return tensor, self.class_index[sample.label]


def eval_loader(
    samples: Sequence, class_names: Sequence[str], spec: PreprocessSpec, batch_size: int, workers=0
) -> DataLoader:
    """Samples in order through kdoct's eval transform of `spec` (normalised, no augmentation)."""
    dataset = OCTDataset(samples, class_names, spec=spec)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
