"""The node's store: received instances, fsync'd to disk before the C-STORE is answered, until their
series is classified and its results delivered (or dead-lettered).

Layout: DIR/<series>/<instance>.dcm, DICOM Part 10 files as received. Directory and file names are
keyed hashes of the Series and SOP Instance UIDs (a UID identifies a patient's study; file names end up
in listings and backups), so the same instance received twice is stored once. A file is written to a
temporary name, fsync'd, renamed and its directory fsync'd: after a crash a series holds only complete
instances, and the node classifies what it finds at start (`pending`).

The store is bounded: `has_room` is false once it holds max_bytes, and the node then refuses new
associations (an instance accepted and then lost is worse than one the sender keeps and retries).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service import prometheus
from service.private_files import FILE_MODE, private_directory

__all__ = ["InstanceStore", "StoredSeries"]

SUFFIX = ".dcm"


CALLER_FILE = "caller"
INCOMING = ".incoming"


@dataclass(frozen=True)
class StoredSeries:
    key: str  # the directory's name
    paths: tuple[Path, ...]
    caller: str  # the calling AE title of its latest instance


class InstanceStore:
    def __init__(self, directory: Path, max_bytes: int, *, name: Callable[[str], str]) -> None:
        """`name`: a UID's keyed hash (service/audit_key.py AuditKey.file_name)."""
        self.directory = directory
        self.max_bytes = max_bytes
        self._name = name
        self._lock = threading.Lock()
        private_directory(directory)
        self.used_bytes = sum(path.stat().st_size for path in directory.glob(f"*/*{SUFFIX}"))
        prometheus.DICOM_STORE_BYTES.set(self.used_bytes)
        prometheus.DICOM_STORE_CAPACITY.set(max_bytes)

    def incoming(self) -> Path:
        """Where data sets are written as they arrive (pynetdicom's temporary files): inside the store's
        file system, so storing one is a rename; emptied at start (none of them was answered success)."""
        directory = self.directory / INCOMING
        shutil.rmtree(directory, ignore_errors=True)
        private_directory(directory)
        return directory

    def series_key(self, series_instance_uid: str) -> str:
        return self._name(series_instance_uid)

    def has_room(self) -> bool:
        return self.used_bytes < self.max_bytes

    def put(self, series_key: str, sop_instance_uid: str, source: Path, caller: str) -> Path:
        """Move (or copy) the received file `source` into the series; durable when this returns. An
        instance stored before is replaced by the newer copy. `caller` (an AE title) is kept with the
        series: after a restart its records still name who sent it."""
        directory = self.directory / series_key
        private_directory(directory)
        _write_durably(directory / CALLER_FILE, caller.encode())
        target = directory / f"{self._name(sop_instance_uid)}{SUFFIX}"
        temporary = directory / f".{target.name}.partial"
        try:
            os.replace(source, temporary)  # the same file system: no copy
        except OSError:
            shutil.copyfile(source, temporary)
        os.chmod(temporary, FILE_MODE)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        size = temporary.stat().st_size
        with self._lock:
            replaced = target.stat().st_size if target.exists() else 0
            os.replace(temporary, target)
            self.used_bytes += size - replaced
            prometheus.DICOM_STORE_BYTES.set(self.used_bytes)
        _fsync_directory(directory)
        return target

    def pending(self) -> list[StoredSeries]:
        """Every series held now (at start: what a previous run received and did not finish)."""
        found = []
        for directory in sorted(
            path for path in self.directory.iterdir() if path.is_dir() and not path.name.startswith(".")
        ):
            for partial in directory.glob(f".*{SUFFIX}.partial"):
                partial.unlink(missing_ok=True)  # never renamed: its C-STORE was never answered success
            paths = tuple(sorted(directory.glob(f"*{SUFFIX}")))
            caller_file = directory / CALLER_FILE
            caller = caller_file.read_text().strip() if caller_file.exists() else "unknown"
            if paths:
                found.append(StoredSeries(directory.name, paths, caller))
            else:
                shutil.rmtree(directory, ignore_errors=True)
        return found

    def remove(self, paths: list[Path]) -> None:
        """These instances are done with (classified, and their results delivered or dead-lettered, or
        refused)."""
        freed = 0
        directories = set()
        for path in paths:
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            directories.add(path.parent)
        # An emptied series directory stays until the next start (`pending`): removing it here could
        # race with an instance of the same series being stored into it.
        for directory in directories:
            _fsync_directory(directory)
        with self._lock:
            self.used_bytes = max(0, self.used_bytes - freed)
            prometheus.DICOM_STORE_BYTES.set(self.used_bytes)


def _write_durably(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
