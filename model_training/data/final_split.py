"""The final model's split (DIR/split.csv): every patient of the data in `train`, the held-back `val`
slice that calibrates the models (and fits the safety gate's threshold), or `test`, never trained or
tuned on; patients whole, stratified by label, saved once and refused on read if a patient leaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdoct.errors import ConfigError, DataError
from model_training.data.folds import check_no_leakage, group_split
from model_training.data.manifest import (
    MANIFEST_COLUMNS,
    read_csv_rows,
    sample_rows,
    samples_from_rows,
    write_csv,
)

__all__ = ["make_final_split", "read_final_split", "write_final_split"]


def make_final_split(samples, holdout_fraction: float, seed: int, test_fraction: float = 0.0) -> list[str]:
    """`train`, `val` (the held-back calibration slice) or `test` (patients neither trained nor tuned on:
    the safety gate's and the card's held-out figures) per sample; patients whole, stratified by label.
    Holdout and test fractions 0: every sample trains (calibrated from cross-validation instead)."""
    if holdout_fraction == 0 and test_fraction == 0:
        return ["train"] * len(samples)
    if not 0 < holdout_fraction < 0.5:
        raise ConfigError(f"the held-back fraction must be in (0, 0.5), got {holdout_fraction}")
    if not 0 <= test_fraction < 0.5 or holdout_fraction + test_fraction >= 0.6:
        raise ConfigError(
            f"the test fraction must be in [0, 0.5) and leave most patients to train on, got {test_fraction} "
            f"with a held-back fraction of {holdout_fraction}"
        )
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient_id for s in samples])
    roles = np.array(["train"] * len(samples), dtype=object)
    patients = len(set(groups.tolist()))
    if test_fraction > 0:
        test_parts = max(2, round(1 / test_fraction))
        if patients < test_parts:
            raise DataError(
                f"{patients} patients are too few to set 1/{test_parts} of them apart for testing"
            )
        roles[group_split(labels, groups, test_parts, seed)[0]] = "test"
    rest = np.flatnonzero(roles == "train")
    parts = max(2, round((1 - test_fraction) / holdout_fraction))
    if len(set(groups[rest].tolist())) < parts:
        raise DataError(
            f"{len(set(groups[rest].tolist()))} patients are too few to hold back 1/{parts} of them"
        )
    roles[rest[group_split(labels[rest], groups[rest], parts, seed)[0]]] = "val"
    return roles.tolist()


def write_final_split(samples, roles: list[str], path: Path) -> None:
    """DIR/split.csv: the manifest columns plus each sample's role."""
    rows = [base + [role] for base, role in zip(sample_rows(samples, path), roles, strict=True)]
    write_csv(path, [*MANIFEST_COLUMNS, "role"], rows)


def read_final_split(path: Path) -> dict[str, list]:
    """{'train', 'val', 'test'} from DIR/split.csv (val and test may be empty: a model trained on every
    patient), refused if a patient is on two sides."""
    _, rows = read_csv_rows(path, ("path", "label", "patient_id", "role"))
    samples = samples_from_rows(path, rows)
    roles = [row["role"] for row in rows]
    check_no_leakage(samples, roles)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for sample, role in zip(samples, roles, strict=True):
        split[role].append(sample)
    if not split["train"]:
        raise DataError(f"{path}: the training part is empty")
    return split
