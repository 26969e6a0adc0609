"""The local spool: prediction rows appended and fsync'd to JSONL files while the database is
unreachable, replayed into it once it is back.

Each process appends to a file of its own (``spool-<pid>-<random>.jsonl``) and holds an exclusive
flock on it while it is active, so no other process replays a file that is still growing. A file is
replayed by whichever process first gets its lock; a process releases its own file before replaying.
Replay is idempotent (see service/db/chain.py), so a file replayed twice does no harm.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from service.db.rows import row_from_json, row_to_json

__all__ = ["Spool", "SpoolFile", "fsync_dir"]

log = logging.getLogger(__name__)

SPOOL_GLOB = "spool-*.jsonl"


class SpoolFile:
    """A claimed spool file: its rows, and removal once they are in the database."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self.path = path
        self.rows = rows

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Spool:
    def __init__(self, spool_dir: str | os.PathLike[str]) -> None:
        self.spool_dir = Path(spool_dir)
        self._active: IO[str] | None = None
        self._active_path: Path | None = None

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append and fsync; on return the rows survive a crash. Raises OSError when it cannot."""
        handle = self._active_file()
        handle.write("".join(row_to_json(row) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())

    def release(self) -> None:
        """Close this process's active file so it can be replayed; the next append starts a new one."""
        if self._active is not None:
            self._active.close()  # closing drops the flock
            self._active = self._active_path = None

    def has_files(self) -> bool:
        return self.spool_dir.is_dir() and any(self.spool_dir.glob(SPOOL_GLOB))

    def claimable(self) -> bool:
        """Whether some spool file is held by no live process (a spool-first writer's own journal is
        always there and always held: it is not a reason to replay)."""
        if not self.spool_dir.is_dir():
            return False
        for path in self.spool_dir.glob(SPOOL_GLOB):
            if path == self._active_path:
                continue
            try:
                with path.open("rb") as handle:
                    if _unheld(handle):
                        return True
            except FileNotFoundError:
                continue
        return False

    def backlog(self, *, unheld_only: bool = False) -> int:
        """Rows waiting in the spool files of the directory (all processes); with ``unheld_only``, in
        those no live process holds (a spool-first writer's journals are held while their rows are on
        their way to the database: not a backlog)."""
        if not self.spool_dir.is_dir():
            return 0
        total = 0
        for path in self.spool_dir.glob(SPOOL_GLOB):
            try:
                with path.open("rb") as handle:
                    if unheld_only and not _unheld(handle):
                        continue
                    total += sum(1 for line in handle if line.endswith(b"\n"))
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
        return total

    def writable(self) -> bool:
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            probe = self.spool_dir / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False

    @contextmanager
    def claim_one(self) -> Iterator[SpoolFile | None]:
        """The first spool file no live process holds, locked for the duration of the block."""
        if not self.spool_dir.is_dir():
            yield None
            return
        for path in sorted(self.spool_dir.glob(SPOOL_GLOB)):
            if path == self._active_path:
                continue
            try:
                handle = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # still being written, or being replayed by another process
                yield SpoolFile(path, _read_rows(path, handle))
                return
        yield None

    def _active_file(self) -> IO[str]:
        if self._active is None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            path = self.spool_dir / f"spool-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
            handle = path.open("a", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            fsync_dir(self.spool_dir)  # the new file's name must survive a crash too
            self._active, self._active_path = handle, path
        return self._active


def _unheld(handle: IO[bytes]) -> bool:
    """Whether no live process holds the file (the probe's own lock goes with its handle)."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_rows(path: Path, handle: IO[str]) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(handle, start=1):
        if not line.endswith("\n"):
            # A write cut short by a crash: its request was never answered, so nothing is lost.
            log.warning("spool %s: ignoring an incomplete last line %d", path.name, number)
            break
        try:
            rows.append(row_from_json(line))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("spool %s: line %d is not a prediction row (%s); skipped", path.name, number, exc)
    return rows


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
