"""A run's data: the samples the config describes (synthetic data generated into the run), and the
run's DIR/manifest.csv and DIR/folds.csv, made once and from then on only read, by every stage and
every rank (model_training/layout.py says where they lie)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from kdoct.errors import ConfigError, DataError
from kdoct.labels import class_names as class_set_names
from model_training.config import ExperimentConfig
from model_training.data import readers
from model_training.data.folds import FoldTable, make_folds, read_folds, write_folds
from model_training.data.image_cache import decoded_images
from model_training.data.manifest import write_manifest
from model_training.data.synthetic import generate_dataset
from model_training.train.distributed import DistContext

__all__ = ["load_samples", "prepare_folds"]

log = logging.getLogger(__name__)


def load_samples(config: ExperimentConfig, out_dir: Path) -> list:
    """The dataset's samples as the config describes them (synthetic data is generated here)."""
    data = config.data
    if data.layout == "synthetic":
        synthetic_dir = Path(out_dir) / "data"
        manifest = synthetic_dir / "manifest.csv"
        if not manifest.is_file():
            if synthetic_dir.exists():
                shutil.rmtree(synthetic_dir)  # a half-written folder from an interrupted run
            manifest = generate_dataset(
                synthetic_dir,
                data.synthetic.patients,
                data.synthetic.bscans_per_patient,
                classes=data.classes,
                seed=data.synthetic.seed,
                size=data.synthetic.size,
                progress=True,
            )
        return readers.index_manifest(manifest, data.classes)
    path = Path(data.path)
    if not path.exists():
        raise DataError(f"data.path {path} does not exist (relative paths are read from {Path.cwd()})")
    if data.layout == "kermany":
        return readers.index_kermany(path, data.classes, progress=True)
    if data.layout == "neh":
        return readers.index_neh(
            path, data.classes, progress=True, label_equals_class=data.neh_label_equals_class
        )
    return readers.index_manifest(path, data.classes, progress=True)


def prepare_folds(config: ExperimentConfig, out_dir: Path, context: DistContext) -> FoldTable:
    """DIR/folds.csv: reused when present, else copied from data.folds, else made once from the data."""
    out_dir = Path(out_dir)
    folds_path = out_dir / "folds.csv"
    manifest_path = out_dir / "manifest.csv"
    if context.is_main and not folds_path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.data.folds:
            source = read_folds(config.data.folds)  # validates before we adopt it
            # Rewritten, not copied: its relative image paths must now resolve from the run directory.
            write_folds(source.samples, source.role_table, folds_path)
            write_manifest(source.samples, manifest_path)
        else:
            samples = load_samples(config, out_dir)
            write_manifest(samples, manifest_path)
            roles = make_folds(samples, config.data.k, config.data.fold_seed, config.data.val_fraction)
            write_folds(samples, roles, folds_path)
            log.info("wrote %s (%d images, %d folds)", folds_path, len(samples), config.data.k)
    context.barrier()
    table = read_folds(folds_path)
    if table.k != config.data.k:
        raise ConfigError(
            f"{folds_path} has {table.k} folds but the config says data.k={config.data.k}: use a new --out "
            f"directory or set data.k={table.k}"
        )
    allowed = set(class_set_names(config.data.classes))
    unknown = sorted({s.label for s in table.samples} - allowed)
    if unknown:
        raise DataError(f"{folds_path}: labels {unknown} are not in class set {config.data.classes}")
    decoded_images.enable(config.data.cache_images)
    decoded_images.fill((s.path for s in table.samples), progress=context.is_main)
    return table
