"""Result objects the export could not deliver, kept durably until `python -m service dicom-replay`.

One directory per undelivered series under KDOCT_DICOM_DEAD_LETTER_DIR (0700; files 0600):

    <created>-<prediction_id>-<random>/
        0-sr.dcm, 1-pdf.dcm     the Part 10 files, byte for byte as they were to be sent
        manifest.json           prediction_id, and per object: kind, file, attempts so far, last error class

The UIDs (which identify a study) stay inside the .dcm files: the manifest never holds one, replay reads
them from the files. An entry is written in a hidden `.tmp-*` directory (each file fsync'd, the manifest
last), which is renamed into place and the parent directory fsync'd: a crash leaves either no entry or a
complete one, never a half-written entry that replay would take as complete. `.tmp-*` leftovers of a
crash are ignored (and removed, once an hour old, when the store opens). kdoct_dicom_dead_letters is
kept at the count.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom

from service.dicom_node.results import ResultObject
from service.private_files import FILE_MODE, private_directory
from service.prometheus import DICOM_DEAD_LETTERS

__all__ = ["MANIFEST", "DeadLetterEntry", "DeadLetterItem", "DeadLetters"]

MANIFEST = "manifest.json"
_TEMPORARY = ".tmp-"
_TRASH = ".trash-"
_LEFTOVER_AGE_S = 3600.0
_SOP_INSTANCE, _STUDY_INSTANCE = "SOPInstanceUID", "StudyInstanceUID"


@dataclass(frozen=True)
class DeadLetterItem:
    kind: str
    file: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class DeadLetterEntry:
    path: Path
    prediction_id: str
    items: tuple[DeadLetterItem, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def attempts(self) -> int:
        return max((item.attempts for item in self.items), default=0)

    def objects(self) -> list[ResultObject]:
        """The entry's result objects, their UIDs read back from the files."""
        objects = []
        for item in self.items:
            data = (self.path / item.file).read_bytes()
            dataset = pydicom.dcmread(
                io.BytesIO(data),
                stop_before_pixels=True,
                specific_tags=["SOPInstanceUID", "StudyInstanceUID"],
            )
            objects.append(
                ResultObject(
                    kind=item.kind,
                    sop_instance_uid=str(dataset.SOPInstanceUID),
                    study_instance_uid=str(dataset.StudyInstanceUID),
                    data=data,
                )
            )
        return objects


def _write_durably(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DeadLetters:
    """The dead-letter directory. Safe for one process; entries are named uniquely, so several writers
    never collide, and remove() takes an entry out with one rename."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        private_directory(self.directory)
        now = time.time()
        for leftover in self.directory.iterdir():
            # A crash mid-write or mid-remove; a young one may be another process's write in progress.
            if leftover.name.startswith((_TEMPORARY, _TRASH)) and now - _mtime(leftover) > _LEFTOVER_AGE_S:
                shutil.rmtree(leftover, ignore_errors=True)
        self.update_gauge()

    def put(
        self,
        prediction_id: str,
        objects: Sequence[ResultObject],
        *,
        attempts: int | Mapping[str, int] = 0,
        errors: Mapping[str, str] | None = None,
    ) -> DeadLetterEntry:
        """Keep `objects` durably. `attempts` (one count, or per SOP Instance UID) and `errors` (per SOP
        Instance UID: the last error's class) go to the manifest; the UIDs themselves do not."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{prediction_id}-{secrets.token_hex(4)}"
        temporary = self.directory / (_TEMPORARY + name)
        private_directory(temporary)
        items = []
        for index, obj in enumerate(objects):
            file_name = f"{index}-{obj.kind}.dcm"
            _write_durably(temporary / file_name, obj.data)
            tries = attempts if isinstance(attempts, int) else attempts.get(obj.sop_instance_uid, 0)
            error = (errors or {}).get(obj.sop_instance_uid)
            items.append(DeadLetterItem(kind=obj.kind, file=file_name, attempts=tries, last_error=error))
        manifest = {
            "prediction_id": str(prediction_id),
            "created_at": datetime.now(UTC).isoformat(),
            "objects": [item.__dict__ for item in items],
        }
        _write_durably(temporary / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_directory(temporary)
        final = self.directory / name
        os.rename(temporary, final)
        _fsync_directory(self.directory)
        self.update_gauge()
        return DeadLetterEntry(path=final, prediction_id=str(prediction_id), items=tuple(items))

    def entries(self) -> list[DeadLetterEntry]:
        """The complete entries, oldest first; a directory without a readable manifest is skipped."""
        found = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                items = tuple(DeadLetterItem(**item) for item in manifest["objects"])
                entry = DeadLetterEntry(path=path, prediction_id=str(manifest["prediction_id"]), items=items)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append(entry)
        return found

    def remove(self, entry: DeadLetterEntry) -> None:
        """Take the entry out: renamed away (durably) first, so a crash never leaves part of it."""
        trash = self.directory / (_TRASH + entry.name)
        os.rename(entry.path, trash)
        _fsync_directory(self.directory)
        shutil.rmtree(trash, ignore_errors=True)
        self.update_gauge()

    def count(self) -> int:
        return len(self.entries())

    def update_gauge(self) -> None:
        """kdoct_dicom_dead_letters at the count now (the node calls it now and then: `dicom-replay`
        empties entries from another process)."""
        DICOM_DEAD_LETTERS.set(self.count())
