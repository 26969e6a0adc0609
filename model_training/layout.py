"""The run directory (`--out DIR`) every training command writes, and whether a stage in it is done.

    DIR/manifest.csv, DIR/folds.csv           the data and the one fold assignment every stage reads
    DIR/fold_K/teacher/, DIR/fold_K/student/   bundles of a cross-validation fold
    DIR/fold_K/work/<role>/                    last.pt (resume), final.pt (export), log.jsonl
    DIR/split.csv, DIR/<role>/, DIR/work/<role>/   the same for a final model (fold None)

A stage whose bundle is complete is not trained again, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from kdoct.bundle import load_bundle
from kdoct.errors import BundleError

__all__ = ["bundle_dir", "is_complete_bundle", "split_path", "stage_root", "work_dir"]


def stage_root(out_dir: Path, fold: int | None) -> Path:
    """DIR/fold_K for a cross-validation fold; DIR itself for a final model (fold None)."""
    return Path(out_dir) if fold is None else Path(out_dir) / f"fold_{fold}"


def work_dir(out_dir: Path, fold: int | None, role: str) -> Path:
    return stage_root(out_dir, fold) / "work" / role


def bundle_dir(out_dir: Path, fold: int | None, role: str) -> Path:
    return stage_root(out_dir, fold) / role


def split_path(out_dir: Path, fold: int | None) -> Path:
    """The file that fixes which patients a stage trains on: DIR/folds.csv, or DIR/split.csv for a
    final model. Its fingerprint goes into every bundle, so a student can check its teacher's."""
    return Path(out_dir) / ("split.csv" if fold is None else "folds.csv")


def is_complete_bundle(directory: Path) -> bool:
    """Whether `directory` holds a bundle that loads and verifies (so a rerun can reuse it)."""
    try:
        load_bundle(directory)
        return True
    except BundleError:
        return False
