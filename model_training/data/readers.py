"""Readers that turn a dataset on disk into manifest samples.

Three layouts are understood; each returns `Sample`s sorted by path with canonical lower-case labels.

Kermany / UCSD OCT2017 (`index_kermany`): `ROOT/<CLASS>/<CLASS>-<PATIENT>-<N>.<ext>`, ROOT being one
split folder of the release (`train/` or `test/`) or the shared sample. The patient is the middle
token alone: the same patient can appear under two classes. The volume is unknown (empty).
Class folders of a known class outside the chosen class set (DME for `neh3`) are skipped on purpose;
any other folder is an error. Non-image files at the top (README, manifest.csv) are ignored.

Noor Eye Hospital (`index_neh`), assumptions about the Mendeley release (8kt969dhx6):
- `data_information.csv` sits in ROOT (or the folder ROOT names is the image folder and the CSV is
  beside it). Its columns are Directory, Label, Class, Patient ID (an Eye column may follow);
  headers are matched ignoring case, spaces and underscores.
- Directory is a path relative to the image folder, which is `NEH_UT_2021RetinalOCTDataset/` next to
  the CSV, or the CSV's own folder: `<Class>/<patient number>/[OD|OS/]<file>`. Back-slashes are
  accepted, and letter case is resolved against the disk, since the release was made on Windows.
- Label is the per-B-scan label (what training uses); Class is the patient's diagnosis folder.
  Patient numbers restart in every class folder, so the patient id is `<CLASS>-<number>`.
- The volume id is the folder that holds the image (`CNV/12/OD`).
- A row repeated with the same label is counted once; repeated with another label is an error.
- An image under the image folder that the CSV does not list is unlabeled: an error.

Every problem (unreadable image, unlabeled file, unknown label or folder) is collected and reported
by name in one `DataError`; nothing is silently dropped or replaced.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from kdoct.errors import DataError
from kdoct.labels import CLASS_SETS
from model_training.data.image_check import IMAGE_SUFFIXES, ProblemList, check_images
from model_training.data.manifest import Sample, read_manifest, resolve_classes

__all__ = ["describe_class_filter", "index_kermany", "index_manifest", "index_neh"]

logger = logging.getLogger(__name__)

KNOWN_LABELS = frozenset(name for names in CLASS_SETS.values() for name in names)
_KERMANY_NAME = re.compile(r"^(?P<label>[A-Za-z]+)-(?P<patient>[A-Za-z0-9]+)-(?P<index>\d+)$")
_NEH_IMAGE_DIR = "NEH_UT_2021RetinalOCTDataset"
_NEH_CSV = "data_information.csv"
_NEH_COLUMNS = {"directory": "Directory", "label": "Label", "class": "Class", "patientid": "Patient ID"}


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _finish(samples: list[Sample], problems: ProblemList, progress: bool) -> list[Sample]:
    """Check every image, raise once for all problems, return samples sorted by path."""
    check_images((s.path for s in samples), problems, progress=progress)
    problems.raise_if_any()
    if not samples:
        raise DataError(f"{problems.what}: no images found for the chosen classes")
    return sorted(samples, key=lambda s: s.path)


def _require_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    return root.resolve()


# -- Kermany / UCSD ------------------------------------------------------------------------------


def index_kermany(root: str | Path, classes: str | Iterable[str], progress: bool = False) -> list[Sample]:
    """Index a Kermany/UCSD split folder `ROOT/<CLASS>/<CLASS>-<PATIENT>-<N>.<ext>`."""
    root = _require_dir(root)
    allowed = resolve_classes(classes)
    problems = ProblemList(f"Kermany layout at {root}")
    samples: list[Sample] = []
    class_dirs = 0
    for entry in sorted(root.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_dir():
            label = entry.name.lower()
            if label in allowed:
                class_dirs += 1
                samples.extend(_kermany_class_dir(entry, label, problems))
            elif label in KNOWN_LABELS:
                class_dirs += 1
                logger.info("skipping class folder %s: not in classes %s", entry.name, ",".join(allowed))
            else:
                problems.add(entry, f"unknown class folder; expected {', '.join(sorted(KNOWN_LABELS))}")
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            problems.add(entry, "image outside a class folder: unlabeled")
    if class_dirs == 0 and not problems.items:
        raise DataError(
            f"{root}: no class folders ({', '.join(c.upper() for c in allowed)}); point --root at the "
            "folder that holds them (the release's train/ or test/ folder)"
        )
    return _finish(samples, problems, progress)


def _kermany_class_dir(class_dir: Path, label: str, problems: ProblemList) -> list[Sample]:
    samples = []
    for path in sorted(class_dir.iterdir()):
        if _is_hidden(path):
            continue
        if path.is_dir():
            problems.add(path, "unexpected folder inside a class folder")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.add(path, "not an image file (expected .jpeg, .png, .tif or .bmp)")
            continue
        match = _KERMANY_NAME.match(path.stem)
        if match is None:
            problems.add(path, "name is not CLASS-PATIENT-N.ext: patient unknown")
            continue
        if match["label"].lower() != label:
            problems.add(path, f"name says {match['label']} but the folder says {class_dir.name}")
            continue
        samples.append(Sample(path.as_posix(), label, match["patient"]))
    return samples


# -- Noor Eye Hospital ---------------------------------------------------------------------------


def index_neh(
    root: str | Path,
    classes: str | Iterable[str],
    progress: bool = False,
    *,
    label_equals_class: bool = False,
) -> list[Sample]:
    """Index the NEH release through its data_information.csv (see the module docstring).

    label_equals_class: keep only the B-scans whose Label equals their patient's Class, as the
    reference code does before making folds (the paper's NEH figures are on that subset). It drops
    the normal-looking B-scans of diseased eyes, which makes the task easier than the clinic's; the
    counts it drops are logged.
    """
    root = _require_dir(root)
    allowed = resolve_classes(classes)
    csv_path = _find_neh_csv(root)
    rows = _read_neh_rows(csv_path)
    image_dir = _find_neh_image_dir(root, csv_path, [row["directory"] for row in rows[:20]])
    resolver = _CaseInsensitiveResolver(image_dir)
    problems = ProblemList(f"NEH layout at {root}")
    by_path: dict[str, Sample] = {}
    mismatched: list[Sample] = []
    repeated = 0
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path.name} line {line}"
        if not row["directory"]:
            problems.add(where, "empty Directory")
            continue
        relative = PurePosixPath(row["directory"].replace("\\", "/"))
        label = row["label"].lower()
        if not label:
            problems.add(relative, f"unlabeled ({where} has an empty Label)")
            continue
        if label not in KNOWN_LABELS:
            problems.add(relative, f"unknown label {row['label']!r} ({where})")
            continue
        if not row["patientid"]:
            problems.add(relative, f"no Patient ID ({where})")
            continue
        path = resolver.resolve(relative)
        if path is None:
            problems.add(relative, f"listed in {csv_path.name} ({where}) but not found under {image_dir}")
            continue
        key = path.as_posix()
        if key in by_path:
            if by_path[key].label != label:
                problems.add(relative, f"listed twice, as {by_path[key].label} and as {label} ({where})")
            repeated += 1
            continue
        if label not in allowed:
            continue
        volume = path.parent.relative_to(image_dir).as_posix()
        sample = Sample(key, label, _neh_patient_id(row), "" if volume == "." else volume)
        if label_equals_class and label != row["class"].lower():
            mismatched.append(sample)
            by_path[key] = sample  # listed, so not "unlabeled" below; removed after the scan
            continue
        by_path[key] = sample
    if repeated:
        logger.info("%s: %d repeated rows counted once", csv_path.name, repeated)
    if label_equals_class:
        for sample in mismatched:
            del by_path[sample.path]
        logger.info("%s", describe_class_filter(mismatched, list(by_path.values())))
    listed = {p.lower() for p in by_path} | {p.lower() for p in resolver.resolved}
    for path in sorted(image_dir.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(image_dir).parts)
        if not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.as_posix().lower() not in listed:
            problems.add(path, f"image not listed in {csv_path.name}: unlabeled")
    return _finish(list(by_path.values()), problems, progress)


def describe_class_filter(dropped: list[Sample], kept: list[Sample]) -> str:
    """One line on what `label_equals_class` removed: B-scans, and patients losing some or all."""
    kept_patients = {s.patient_id for s in kept}
    touched = {s.patient_id for s in dropped}
    gone = touched - kept_patients
    return (
        f"NEH Label == Class filter (the reference code's): dropped {len(dropped)} B-scans of "
        f"{len(touched)} patients ({len(gone)} of them entirely); kept {len(kept)} B-scans of "
        f"{len(kept_patients)} patients"
    )


def _find_neh_csv(root: Path) -> Path:
    for folder in (root, root.parent):
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and entry.name.lower() == _NEH_CSV:
                return entry
    raise DataError(f"{root}: no {_NEH_CSV} here or in the folder above; is this the NEH release?")


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _read_neh_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows keyed by normalised header (directory, label, class, patientid)."""
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        keys = [_header_key(h) for h in header]
        missing = [name for key, name in _NEH_COLUMNS.items() if key not in keys]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'nothing'}"
            )
        rows = [
            {key: value.strip() for key, value in zip(keys, record, strict=False)}
            for record in reader
            if any(value.strip() for value in record)
        ]
    if not rows:
        raise DataError(f"{csv_path}: no rows after the header")
    for row in rows:
        for key in _NEH_COLUMNS:
            row.setdefault(key, "")
    return rows


def _neh_patient_id(row: dict[str, str]) -> str:
    number = re.sub(r"\.0+$", "", row["patientid"])  # "12.0" from a spreadsheet export is patient 12
    return f"{row['class'].upper()}-{number}" if row["class"] else number


def _find_neh_image_dir(root: Path, csv_path: Path, first_directories: list[str]) -> Path:
    candidates = []
    for base in (csv_path.parent, root):
        for folder in (base / _NEH_IMAGE_DIR, base):
            if folder.is_dir() and folder not in candidates:
                candidates.append(folder)
    for folder in candidates:
        resolver = _CaseInsensitiveResolver(folder)
        if any(resolver.resolve(PurePosixPath(d.replace("\\", "/"))) for d in first_directories if d):
            return folder
    raise DataError(
        f"{csv_path}: none of its first Directory entries exists under {', '.join(map(str, candidates))}"
    )


class _CaseInsensitiveResolver:
    """Finds `relative` under `base`, matching each path part ignoring letter case."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._listings: dict[Path, dict[str, str]] = {}
        self.resolved: set[str] = set()

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = {entry.name.lower(): entry.name for entry in folder.iterdir()}
            except OSError:
                self._listings[folder] = {}
        return self._listings[folder]

    def resolve(self, relative: PurePosixPath) -> Path | None:
        if relative.is_absolute() or ".." in relative.parts:
            return None
        path = self.base
        for part in relative.parts:
            exact = path / part
            if exact.exists():
                path = exact
                continue
            actual = self._listing(path).get(part.lower())
            if actual is None:
                return None
            path = path / actual
        if not path.is_file():
            return None
        self.resolved.add(path.as_posix())
        return path


# -- an existing manifest ------------------------------------------------------------------------


def index_manifest(path: str | Path, classes: str | Iterable[str], progress: bool = False) -> list[Sample]:
    """Re-index an existing manifest (a CSV file, or a folder holding manifest.csv).

    Rows of a known class outside `classes` (DME for `neh3`) are skipped as in `index_kermany`;
    unknown labels and unreadable or missing images are errors.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    allowed = resolve_classes(classes)
    problems = ProblemList(f"manifest {path}")
    samples, skipped = [], 0
    for sample in read_manifest(path):
        label = sample.label.strip().lower()
        if label in allowed:
            samples.append(Sample(sample.path, label, sample.patient_id, sample.volume_id))
        elif label in KNOWN_LABELS:
            skipped += 1
        else:
            problems.add(sample.path, f"unknown label {sample.label!r}; expected one of {', '.join(allowed)}")
    if skipped:
        logger.info("%s: skipped %d rows of classes outside %s", path.name, skipped, ",".join(allowed))
    return _finish(samples, problems, progress)
