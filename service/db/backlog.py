"""The spool backlog (``kdoct_spool_backlog``): rows waiting in a spool directory's files, kept as a count.

Counting by reading every spool file cost each batch a pass over the whole backlog: with 150k rows
(133 MB) spooled during an outage, throughput fell from 43.8 to 8.9 req/s (issue 23, case 10). The
count is now taken once (at start) and then kept by addition: this process's appends add their rows,
a file replayed or set aside is subtracted, one of our journal segments let go for replay is added with
the rows it holds. A rescan (at start and on the writers' idle probe, never per request) notices the
files of other processes: a file already counted is not read again, a grown one only from where its
count stopped.

``unheld_only`` counts only files no live process holds (a spool-first writer's live journals hold
rows on their way to the database from memory: not a backlog).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from service.db.spool_files import held_by_another, spool_names

__all__ = ["SpoolBacklog"]

_READ = 1 << 20


@dataclass
class _Counted:
    device: int
    inode: int
    offset: int  # bytes counted so far
    rows: int  # complete lines (newline-terminated) in those bytes


class SpoolBacklog:
    def __init__(self, spool_dir: str | os.PathLike[str], *, unheld_only: bool = False) -> None:
        self.spool_dir = Path(spool_dir)
        self.unheld_only = unheld_only
        self._files: dict[str, _Counted] = {}
        self._ours: set[str] = set()  # files this process appends to: counted by appended(), never read
        self._total = 0
        self._lock = threading.Lock()  # overdue requests spool from worker threads

    @property
    def total(self) -> int:
        return self._total

    def appended(self, path: Path, fd: int, size: int, rows: int) -> None:
        """This process appended `rows` to its own file; it now ends at `size` bytes (held by us: not a
        backlog when only unheld files count)."""
        if self.unheld_only:
            return
        stat = os.fstat(fd)
        with self._lock:
            counted = self._files.get(path.name)
            if counted is None or (counted.device, counted.inode) != (stat.st_dev, stat.st_ino):
                counted = _Counted(stat.st_dev, stat.st_ino, 0, 0)
                self._files[path.name] = counted
            self._ours.add(path.name)
            counted.offset = size
            counted.rows += rows
            self._total += rows

    def let_go(self, path: Path, device: int, inode: int, size: int, rows: int) -> None:
        """One of our journal segments was closed for replay, holding `rows` in `size` bytes."""
        with self._lock:
            self._forget(path.name)
            self._files[path.name] = _Counted(device, inode, size, rows)
            self._total += rows

    def removed(self, path: Path) -> None:
        """The file was replayed (or set aside) and unlinked."""
        with self._lock:
            self._forget(path.name)

    def rescan(self) -> int:
        """Notice files this count does not know yet (other processes'), and files gone; returns the
        total. Reads only what was not counted before."""
        try:
            names = spool_names(self.spool_dir)
        except OSError:
            return self._total
        present = set(names)
        with self._lock:
            for name in [name for name in self._files if name not in present]:
                self._forget(name)
            ours = set(self._ours)
        for name in names:
            if name not in ours:
                self._recount(self.spool_dir / name)
        return self._total

    # ------------------------------------------------------------------------------------------

    def _recount(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # removed meanwhile, or unreadable (the replay sets it aside)
            return
        try:
            if self.unheld_only and held_by_another(fd):
                with self._lock:
                    self._forget(path.name)
                return
            stat = os.fstat(fd)
            with self._lock:
                counted = self._files.get(path.name)
                if counted is not None and (counted.device, counted.inode) != (stat.st_dev, stat.st_ino):
                    self._forget(path.name)
                    counted = None
                offset = counted.offset if counted is not None else 0
            if stat.st_size <= offset:
                return
            rows, offset = _count_lines(fd, offset)
            with self._lock:
                counted = self._files.setdefault(path.name, _Counted(stat.st_dev, stat.st_ino, 0, 0))
                counted.rows += rows
                counted.offset = offset
                self._total += rows
        except OSError:
            return
        finally:
            os.close(fd)

    def _forget(self, name: str) -> None:
        self._ours.discard(name)
        counted = self._files.pop(name, None)
        if counted is not None:
            self._total -= counted.rows


def _count_lines(fd: int, offset: int) -> tuple[int, int]:
    """Newline-terminated lines from `offset` to the end: (count, the offset after the last newline)."""
    rows, position, counted_to = 0, offset, offset
    while chunk := os.pread(fd, _READ, position):
        newlines = chunk.count(b"\n")
        if newlines:
            rows += newlines
            counted_to = position + chunk.rindex(b"\n") + 1
        position += len(chunk)
    return rows, counted_to
