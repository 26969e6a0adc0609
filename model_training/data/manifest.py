"""The manifest: one CSV row per B-scan (path, label, patient_id, volume_id).

Every later step (folds, training, evaluation) reads a manifest, never a dataset's own layout. Paths
inside the file are written relative to the manifest's folder when the image lies below it (so a
synthetic dataset can be moved as a whole) and absolute otherwise; `read_manifest` always returns
absolute paths.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdoct.errors import DataError, LabelError
from kdoct.labels import class_names, parse_labels

__all__ = [
    "MANIFEST_COLUMNS",
    "Sample",
    "manifest_fingerprint",
    "read_manifest",
    "resolve_classes",
    "write_manifest",
]

MANIFEST_COLUMNS = ("path", "label", "patient_id", "volume_id")
_REQUIRED_COLUMNS = ("path", "label", "patient_id")  # volume_id is optional: not every dataset knows it


@dataclass(frozen=True)
class Sample:
    """One B-scan. `label` is the per-B-scan label; `patient_id` groups scans for patient-level splits."""

    path: str
    label: str
    patient_id: str
    volume_id: str = ""


def resolve_classes(classes: str | Iterable[str]) -> tuple[str, ...]:
    """A class-set name (`neh3`, `ucsd4`) or an explicit sequence of class names -> class names."""
    if isinstance(classes, str):
        return class_names(classes)
    return tuple(str(c).strip().lower() for c in classes)


def _portable_path(path: str, base_dir: Path) -> str:
    """Relative (posix) when `path` lies inside `base_dir`, absolute otherwise."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(base_dir).as_posix()
    except ValueError:
        return absolute.as_posix()


def sample_rows(samples: Iterable[Sample], out_path: Path) -> list[list[str]]:
    """Manifest rows for `samples`, with paths made portable relative to `out_path`'s folder."""
    base_dir = Path(os.path.abspath(out_path)).parent
    return [[_portable_path(s.path, base_dir), s.label, s.patient_id, s.volume_id] for s in samples]


def write_csv(out_path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a CSV with '\\n' line ends, so the same rows always give the same bytes."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return out_path


def write_manifest(samples: Iterable[Sample], out_path: str | Path) -> Path:
    """Write `samples` to a manifest CSV and return its path."""
    out_path = Path(out_path)
    return write_csv(out_path, MANIFEST_COLUMNS, sample_rows(samples, out_path))


def read_csv_rows(path: str | Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV whose header must contain `required`; DataError names what is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        if not header:
            raise DataError(f"{path}: empty file, expected a header with columns {', '.join(required)}")
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}")
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DataError(f"{path}: no rows after the header")
    return header, rows


def samples_from_rows(path: Path, rows: list[dict[str, str]]) -> list[Sample]:
    """Samples from manifest-shaped rows; relative paths are resolved against `path`'s folder."""
    base_dir = Path(os.path.abspath(path)).parent
    incomplete = [
        str(i + 2) for i, row in enumerate(rows) if not (row["path"] and row["label"] and row["patient_id"])
    ]
    if incomplete:
        shown = ", ".join(incomplete[:20]) + (" ..." if len(incomplete) > 20 else "")
        raise DataError(f"{path}: empty path, label or patient_id on line(s) {shown}")
    return [
        Sample(
            path=(base_dir / row["path"]).as_posix(),
            label=row["label"],
            patient_id=row["patient_id"],
            volume_id=row.get("volume_id", ""),
        )
        for row in rows
    ]


def parse_sample_labels(path: Path, samples: list[Sample], classes: str | Iterable[str]) -> list[Sample]:
    """Canonical labels for `samples`; a DataError names every label outside `classes`."""
    allowed = resolve_classes(classes)
    try:
        labels = parse_labels((s.label for s in samples), allowed)
    except LabelError as exc:
        raise DataError(f"{path}: {exc}") from None
    return [
        Sample(s.path, label, s.patient_id, s.volume_id) for s, label in zip(samples, labels, strict=True)
    ]


def read_manifest(path: str | Path, classes: str | Iterable[str] | None = None) -> list[Sample]:
    """Read a manifest. With `classes` (a class-set name or names), labels are parsed and checked."""
    path = Path(path)
    _, rows = read_csv_rows(path, _REQUIRED_COLUMNS)
    samples = samples_from_rows(path, rows)
    if classes is not None:
        samples = parse_sample_labels(path, samples, classes)
    return samples


def manifest_fingerprint(path: str | Path) -> str:
    """sha256 of the manifest file's bytes: names the exact data a model was trained on."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
