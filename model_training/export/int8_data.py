"""Which images calibrate and judge a bundle's INT8 model: those of the bundle's own split.

A bundle exported by a stage records its fold and the sha256 of the split file it trained on
(provenance "fold", "folds_fingerprint"). Its training images calibrate the quantization, its
validation images decide whether the INT8 model is kept; a split file that is not the recorded one is
refused, so an INT8 model is never judged on images its fp32 model was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from kdoct.errors import BundleError
from model_training.data.final_split import read_final_split
from model_training.data.folds import read_folds
from model_training.data.image_cache import open_image
from model_training.data.manifest import manifest_fingerprint

__all__ = ["Int8Images", "default_split_path", "int8_images"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Images:
    calibration: list[Image.Image]
    calibration_labels: list[int]  # class index of each calibration (training) image
    val: list[Image.Image]
    val_labels: list[int]
    source: dict[str, Any]  # the split file, its fold and fingerprint: recorded in bundle.json


def default_split_path(stage_root: Path, fold: int | None) -> Path:
    """Where a stage's split lies: DIR/split.csv next to a final model's DIR/<role>, DIR/folds.csv
    above a cross-validation fold's DIR/fold_K/<role> (model_training/layout.py)."""
    return stage_root / "split.csv" if fold is None else stage_root.parent / "folds.csv"


def _read_split(path: Path, fold: int | None) -> dict[str, list]:
    if fold is None:
        return read_final_split(path)

    return read_folds(path).split(fold)


def _spread(items: list, count: int) -> list:
    """At most `count` items, evenly spaced: the split file is ordered by class, so a prefix would not be."""
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def int8_images(
    provenance: dict[str, Any],
    class_names: tuple[str, ...],
    split_path: Path,
    max_calibration: int = 512,
) -> Int8Images:
    """The decoded training (calibration, at most `max_calibration`) and validation images of the split
    recorded in `provenance`, read from `split_path`."""
    if not split_path.is_file():
        raise BundleError(f"INT8 needs the bundle's split: {split_path} does not exist (pass --split)")
    fold = provenance.get("fold")
    recorded = provenance.get("folds_fingerprint")
    actual = manifest_fingerprint(split_path)
    if recorded is not None and recorded != actual:
        raise BundleError(
            f"{split_path} is not the split this model was trained on (sha256 {actual[:12]}…, the bundle "
            f"records {recorded[:12]}…): pass the run's own split with --split"
        )
    if recorded is None:
        log.warning("the bundle records no split fingerprint: trusting %s as its split", split_path)
    split = _read_split(split_path, fold)
    index = {name: i for i, name in enumerate(class_names)}
    train = _spread(split["train"], max_calibration)
    calibration = [open_image(s.path) for s in train]
    val = [open_image(s.path) for s in split["val"]]
    try:
        calibration_labels = [index[s.label] for s in train]
        labels = [index[s.label] for s in split["val"]]
    except KeyError as exc:
        raise BundleError(f"{split_path}: label {exc} is not one of {class_names}") from None
    source = {"split": split_path.name, "fold": fold, "split_sha256": actual}
    return Int8Images(calibration, calibration_labels, val, labels, source)
