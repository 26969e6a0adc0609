"""Patient-level cross-validation folds, computed once and saved for every later step.

The reference code computed folds separately for teacher and student, so a fold's student could be
tested on patients its teacher trained on. Here `make_folds` runs once, `write_folds` saves the
result as folds.csv (the manifest columns plus `fold_0` ... `fold_<k-1>`, each holding the image's
role `train`, `val` or `test` in that fold), and every step reads it back with `read_folds`, which
refuses any table in which a patient sits on two sides of a fold or is not tested exactly once.

Split: StratifiedGroupKFold over patients gives the k test parts; inside each fold's remaining
patients a second StratifiedGroupKFold with round(1 / val_fraction) splits takes one split as
validation. With k=5 and val_fraction=0.2 that is 64/16/20 of the patients (and, roughly, images).
Stratification uses each image's own label: sklearn balances the per-class image counts while
keeping every patient whole, which keeps class proportions per fold close to the whole even when a
patient's B-scans carry different labels (NEH).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdoct.errors import DataError, LeakageError
from model_training.data.manifest import (
    MANIFEST_COLUMNS,
    Sample,
    read_csv_rows,
    sample_rows,
    samples_from_rows,
    write_csv,
)

__all__ = [
    "ROLES",
    "FoldTable",
    "check_no_leakage",
    "check_test_isolation",
    "group_split",
    "make_folds",
    "read_folds",
    "write_folds",
]

logger = logging.getLogger(__name__)

ROLES = ("train", "val", "test")


def group_split(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """Index arrays of the held-out part of each StratifiedGroupKFold split."""
    # deferred: sklearn takes ~1 s to import; the CLI's parser (the `folds` command) imports this module
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        # sklearn warns when a class has fewer images than splits; on small data that is expected.
        warnings.simplefilter("always")
        held_out = [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]
    for warning in caught:
        logger.warning("fold split: %s", warning.message)
    return held_out


def make_folds(
    samples: Sequence[Sample], k: int = 5, seed: int = 43, val_fraction: float = 0.2
) -> list[list[str]]:
    """Role of every sample in every fold: `roles[i][fold]` in {'train', 'val', 'test'}."""
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    if not 0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    inner_splits = max(2, round(1 / val_fraction))
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient_id for s in samples])
    patients = len(set(groups.tolist()))
    # Each fold's training part is split again into inner_splits patient groups.
    needed = max(k, math.ceil(inner_splits * k / (k - 1)))
    if patients < needed:
        raise DataError(
            f"{patients} patients are too few for {k} folds with a {val_fraction:.0%} validation "
            f"split; need at least {needed}"
        )
    roles = [["train"] * k for _ in samples]
    for fold, test_index in enumerate(group_split(labels, groups, k, seed)):
        rest = np.setdiff1d(np.arange(len(samples)), test_index)
        val_local = group_split(labels[rest], groups[rest], inner_splits, seed + 1 + fold)[0]
        for i in test_index:
            roles[i][fold] = "test"
        for i in rest[val_local]:
            roles[i][fold] = "val"
    return roles


def check_no_leakage(samples: Sequence[Sample], roles: Sequence[str], fold: int | None = None) -> None:
    """Raise LeakageError naming every patient whose images sit on two sides of one fold."""
    if len(samples) != len(roles):
        raise DataError(f"{len(samples)} samples but {len(roles)} roles")
    unknown = sorted({r for r in roles} - set(ROLES))
    if unknown:
        raise DataError(
            f"unknown role(s) {', '.join(map(repr, unknown))}; expected one of {', '.join(ROLES)}"
        )
    sides: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for sample, role in zip(samples, roles, strict=True):
        sides[sample.patient_id][role] += 1
    leaking = [(patient, counts) for patient, counts in sides.items() if len(counts) > 1]
    if leaking:
        where = f" of fold {fold}" if fold is not None else ""
        described = [
            f"patient {patient} in "
            + " and ".join(f"{role} ({n} images)" for role, n in sorted(counts.items()))
            for patient, counts in leaking[:10]
        ]
        more = f" and {len(leaking) - 10} more patients" if len(leaking) > 10 else ""
        raise LeakageError(f"patient leakage{where}: " + "; ".join(described) + more)


def check_test_isolation(split: dict[str, list], fold: int) -> None:
    """The fold's test patients must be in neither its training nor its validation split."""
    test = {s.patient_id for s in split["test"]}
    for role in ("train", "val"):
        shared = test & {s.patient_id for s in split[role]}
        if shared:
            raise LeakageError(
                f"fold {fold}: test patients {sorted(shared)[:5]} are also in the {role} split"
            )
    if not split["test"]:
        raise LeakageError(f"fold {fold} has no test images")


@dataclass(frozen=True)
class FoldTable:
    """A saved fold assignment. `role_table[i][fold]` is sample i's role in that fold."""

    samples: list[Sample]
    role_table: list[list[str]]
    path: Path | None = None
    k: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", len(self.role_table[0]) if self.role_table else 0)

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < self.k:
            raise DataError(
                f"fold {fold} does not exist; {self.path or 'this table'} has folds 0..{self.k - 1}"
            )

    def roles(self, fold: int) -> list[str]:
        self._check_fold(fold)
        return [row[fold] for row in self.role_table]

    def split(self, fold: int) -> dict[str, list[Sample]]:
        parts: dict[str, list[Sample]] = {role: [] for role in ROLES}
        for sample, role in zip(self.samples, self.roles(fold), strict=True):
            parts[role].append(sample)
        return parts


def _fold_columns(k: int) -> list[str]:
    return [f"fold_{i}" for i in range(k)]


def write_folds(samples: Sequence[Sample], roles: Sequence[Sequence[str]], out_path: str | Path) -> Path:
    """Write folds.csv: the manifest columns plus one role column per fold."""
    if len(samples) != len(roles) or not roles:
        raise DataError(f"{len(samples)} samples but {len(roles)} role rows")
    k = len(roles[0])
    out_path = Path(out_path)
    rows = [base + list(r) for base, r in zip(sample_rows(samples, out_path), roles, strict=True)]
    return write_csv(out_path, [*MANIFEST_COLUMNS, *_fold_columns(k)], rows)


def read_folds(path: str | Path) -> FoldTable:
    """Read folds.csv and refuse it unless every fold is leak-free and every patient is tested once."""
    path = Path(path)
    header, rows = read_csv_rows(path, ("path", "label", "patient_id", "fold_0"))
    k = sum(1 for name in header if name.startswith("fold_"))
    expected = _fold_columns(k)
    if [name for name in header if name.startswith("fold_")] != expected:
        raise DataError(f"{path}: fold columns must be {', '.join(expected)} in order")
    if k < 2:
        raise DataError(f"{path}: needs at least 2 fold columns, found {k}")
    samples = samples_from_rows(path, rows)
    role_table = [[row[column] for column in expected] for row in rows]
    for fold in range(k):
        try:
            check_no_leakage(samples, [r[fold] for r in role_table], fold=fold)
        except LeakageError as exc:
            raise LeakageError(f"{path}: {exc}") from None
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
    test_folds: dict[str, set[int]] = defaultdict(set)
    for sample, row in zip(samples, role_table, strict=True):
        test_folds[sample.patient_id].update(f for f, role in enumerate(row) if role == "test")
    wrong = sorted((p, sorted(f)) for p, f in test_folds.items() if len(f) != 1)
    if wrong:
        shown = "; ".join(f"patient {p} in test folds {f or 'none'}" for p, f in wrong[:10])
        raise LeakageError(f"{path}: every patient must be in exactly one test fold: {shown}")
    return FoldTable(samples, role_table, path)
