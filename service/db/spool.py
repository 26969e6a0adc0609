"""The local spool: prediction rows appended and fsync'd to JSONL files while the database is
unreachable, replayed into it once it is back.

Each process appends to a file of its own (``spool-<pid>-<random>.jsonl``) and holds an exclusive
flock on it from before the file gets that name (service/db/spool_files.py) until it lets it go, so no
other process replays a file that is still growing. A file is replayed by whichever process first gets
its lock, checks that the name still names the file it opened, and reads it to the end; only then may
it remove it. Replay is idempotent (see service/db/chain.py), so a file replayed twice does no harm.

Files are read as bytes and each line is decoded on its own: a line that is not a row is set aside in
the quarantine (service/db/quarantine.py) and the rows around it are replayed; a file that cannot be
read is moved there whole.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from service.db.backlog import SpoolBacklog
from service.db.quarantine import OnQuarantined, Quarantine, QuarantinedLines
from service.db.rows import BadLine, row_from_line, row_to_json
from service.db.spool_files import (
    FILE_MODE,
    SPOOL_GLOB,
    create_locked,
    ensure_dir,
    fsync_dir,
    held_by_another,
    same_file,
    spool_names,
    sweep_openings,
    write_all,
)

__all__ = ["SPOOL_GLOB", "Spool", "SpoolFile", "SpoolLine", "UnreadableSpoolFile", "fsync_dir"]

log = logging.getLogger(__name__)

# A row is about 1 kB; a "line" longer than this is not one, and is passed on in pieces, never held whole.
MAX_LINE_BYTES = 1 << 20


class UnreadableSpoolFile(OSError):
    """Reading a claimed spool file failed (an I/O error): the file is set aside whole."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.path = path
        self.error = error


@dataclass(frozen=True)
class SpoolLine:
    number: int  # 1-based, in its file
    raw: bytes  # as read, newline included
    row: dict[str, Any]


class SpoolFile:
    """A claimed spool file (its flock held until the claim ends): its rows, read once, front to back;
    its bad lines set aside; removal once its rows are in the database."""

    def __init__(self, path: Path, handle: IO[bytes], quarantine: Quarantine, counter: SpoolBacklog | None):
        self.path = path
        self._handle = handle
        self._counter = counter
        self.bad_lines: QuarantinedLines = quarantine.lines_of(path)
        self._rows: list[dict[str, Any]] | None = None
        self.lines_read = 0

    def lines(self) -> Iterator[SpoolLine]:
        """Every row of the file, in order; bad lines go to the quarantine on the way. Once only."""
        number = 0
        while line := self._readline():
            number += 1
            self.lines_read = number
            if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
                self.bad_lines.add(number, "too_long", line)
                while line and not line.endswith(b"\n"):
                    line = self._readline()
                    self.bad_lines.more(line)
                continue
            if not line.endswith(b"\n"):
                # A write cut short by a crash (only ever the last line): its request was never
                # answered, so nothing is lost; kept all the same.
                self.bad_lines.add(number, "incomplete", line + b"\n")
                break
            try:
                row = row_from_line(line[:-1])
            except BadLine as exc:
                self.bad_lines.add(number, exc.reason, line)
                continue
            yield SpoolLine(number, line, row)

    def _readline(self) -> bytes:
        try:
            return self._handle.readline(MAX_LINE_BYTES)
        except OSError as exc:
            raise UnreadableSpoolFile(self.path, exc) from exc

    def chunks(self, size: int) -> Iterator[list[SpoolLine]]:
        """lines(), `size` at a time: a large file is never held in memory whole."""
        chunk: list[SpoolLine] = []
        for line in self.lines():
            chunk.append(line)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row at once (for tests and small files; the writer replays chunks())."""
        if self._rows is None:
            self._rows = [line.row for line in self.lines()]
        return self._rows

    def refused(self, line: SpoolLine) -> None:
        """The database refused this row on its own: set it aside with the bad lines."""
        self.bad_lines.add(line.number, "refused", line.raw)

    def remove(self) -> None:
        """Every good row is in the database: keep the bad lines in the quarantine, then remove the
        file (if its name still names the file we read: nothing unseen is ever removed)."""
        self.bad_lines.commit()
        if same_file(self._handle.fileno(), self.path):
            self.path.unlink(missing_ok=True)
        if self._counter is not None:
            self._counter.removed(self.path)

    def close(self) -> None:
        self.bad_lines.discard()
        self._handle.close()  # drops the flock


class Spool:
    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        *,
        counter: SpoolBacklog | None = None,
        on_quarantined: OnQuarantined | None = None,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        # Kept up to date by this spool's appends and replays; None: not counted.
        self.counter = counter
        self.quarantine = Quarantine(self.spool_dir, on_quarantined)
        self._fd: int | None = None
        self._active_path: Path | None = None
        self._size = 0
        self._left_alone: set[str] = set()  # unreadable and unmovable: logged once, then skipped

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append and fsync; on return the rows survive a crash. Raises OSError when it cannot."""
        data = "".join(row_to_json(row) + "\n" for row in rows).encode()
        fd = self._active_file()
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            # Part of the data may be in the file: nothing more goes after it (a torn line must stay
            # the last one, never be glued to the next row), and the file is let go for replay.
            self.release()
            raise
        self._size += len(data)
        if self.counter is not None and self._active_path is not None:
            self.counter.appended(self._active_path, fd, self._size, len(rows))

    def release(self) -> None:
        """Close this process's active file so it can be replayed; the next append starts a new one."""
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = self._active_path = None

    def has_files(self) -> bool:
        return bool(spool_names(self.spool_dir))

    def claimable(self) -> bool:
        """Whether some spool file is held by no live process (a spool-first writer's own journal is
        always there and always held: it is not a reason to replay)."""
        for name in spool_names(self.spool_dir):
            path = self.spool_dir / name
            if path == self._active_path or name in self._left_alone:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError:
                return True  # unreadable: a claim sets it aside
            try:
                if not held_by_another(fd):
                    return True
            finally:
                os.close(fd)
        return False

    def backlog(self, *, unheld_only: bool = False) -> int:
        """Rows waiting in the spool files of the directory (all processes), counted by reading them:
        for tools and tests; the writers keep a SpoolBacklog instead. With ``unheld_only``, only
        files no live process holds."""
        return SpoolBacklog(self.spool_dir, unheld_only=unheld_only).rescan()

    def writable(self) -> bool:
        try:
            ensure_dir(self.spool_dir)
            probe = self.spool_dir / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
            probe.unlink()
            return True
        except OSError:
            return False

    def sweep(self) -> None:
        """Remove what processes that died while creating a spool file left (empty, unlocked)."""
        sweep_openings(self.spool_dir)

    @contextmanager
    def claim_one(self) -> Iterator[SpoolFile | None]:
        """The first spool file no live process holds, locked for the duration of the block."""
        claimed = self._claim()
        try:
            yield claimed
        finally:
            if claimed is not None:
                claimed.close()

    def _claim(self) -> SpoolFile | None:
        for name in spool_names(self.spool_dir):
            path = self.spool_dir / name
            if path == self._active_path or name in self._left_alone:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 - handed to SpoolFile, which closes it
            except FileNotFoundError:
                continue  # replayed by another process meanwhile
            except OSError as exc:
                self.set_aside(path, exc)
                continue
            try:
                # Locked by its writer (still being written) or by another claimer: not ours. The name
                # may have been replayed and removed between our open and our lock: then not ours either.
                if held_by_another(handle.fileno()) or not same_file(handle.fileno(), path):
                    handle.close()
                    continue
            except OSError as exc:
                handle.close()
                self.set_aside(path, exc)
                continue
            return SpoolFile(path, handle, self.quarantine, self.counter)
        return None

    def set_aside(self, path: Path, exc: OSError) -> None:
        """A spool file that cannot be read: into the quarantine whole (or, failing that, left alone)."""
        if self.quarantine.set_aside(path, exc):
            if self.counter is not None:
                self.counter.removed(path)
        else:
            self._left_alone.add(path.name)

    def _active_file(self) -> int:
        if self._fd is None:
            self._fd, self._active_path = create_locked(self.spool_dir)
            self._size = 0
        return self._fd
