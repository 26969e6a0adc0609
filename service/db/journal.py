"""The journal: this process's prediction rows appended and fsync'd to a spool file before their
answers go out, and the file let go once the database holds every row in it.

A segment is a spool file (service/db/spool.py names and format), so a crash leaves something the
ordinary replay knows: it inserts the rows the database lacks and skips those it has. While a segment
is open this process holds its flock, so no other process replays rows that are still on their way
to the database from memory. A segment is sealed (no more appends) when it reaches ``segment_bytes``
or when the writer seals it (idle, or to replay it); a sealed segment whose rows all settled is
unlinked if every row was committed from memory, or closed and left for replay if any was not.

A segment is created under a name replay does not see, flocked, and only then renamed
(service/db/spool_files.py): no claimer can take it before this process holds it. An append that
fails half-way (disk full) seals its segment, so a torn line stays the segment's last line and is
never glued to the next row.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.db.backlog import SpoolBacklog
from service.db.rows import row_to_json
from service.db.spool_files import create_locked, write_all

__all__ = ["Journal", "Segment"]


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    size: int = 0
    written: int = 0  # rows appended
    settled: int = 0  # rows committed from memory, or left for replay
    left_for_replay: bool = False
    sealed: bool = False
    closed: bool = field(default=False)


class Journal:
    def __init__(
        self,
        spool_dir: str | os.PathLike[str],
        *,
        segment_bytes: int = 4 << 20,
        counter: SpoolBacklog | None = None,
    ) -> None:
        if segment_bytes < 1:
            raise ValueError("journal segment_bytes must be at least 1")
        self.spool_dir = Path(spool_dir)
        self.segment_bytes = segment_bytes
        # Told of each segment let go for replay: its rows join the spool's backlog.
        self.counter = counter
        self._lock = threading.Lock()
        self._active: Segment | None = None
        self._open: set[Segment] = set()

    def append(self, rows: list[dict[str, Any]]) -> Segment:
        """Append and fsync; on return the rows survive a crash. Raises OSError when they cannot."""
        data = "".join(row_to_json(row) + "\n" for row in rows).encode()
        with self._lock:
            segment = self._active or self._new_segment()
            try:
                write_all(segment.fd, data)
                os.fsync(segment.fd)
            except OSError:
                self._seal(segment)  # part of `data` may be in it: nothing may follow
                raise
            segment.written += len(rows)
            segment.size += len(data)
            if segment.size >= self.segment_bytes:
                self._seal(segment)
            return segment

    def committed(self, segment: Segment, rows: int) -> None:
        """These rows of the segment are in the database."""
        with self._lock:
            segment.settled += rows
            self._finish_if_settled(segment)

    def leave_for_replay(self, segment: Segment, rows: int) -> None:
        """These rows were not inserted from memory: the file must be replayed."""
        with self._lock:
            segment.settled += rows
            segment.left_for_replay = True
            self._finish_if_settled(segment)

    def seal_active(self, *, only_if_left_for_replay: bool = False) -> None:
        """Start a new segment at the next append, so this one can be let go once its rows settle."""
        with self._lock:
            segment = self._active
            if segment is not None and (segment.left_for_replay or not only_if_left_for_replay):
                self._seal(segment)

    def rows_awaiting_replay(self) -> int:
        """Rows in this process's open segments that only a replay will insert (the whole segment:
        replay skips the rows already stored)."""
        with self._lock:
            return sum(segment.written for segment in self._open if segment.left_for_replay)

    def awaiting_replay(self) -> bool:
        """Whether a segment of ours holds rows that only a replay will insert."""
        with self._lock:
            return any(segment.left_for_replay for segment in self._open)

    def close(self) -> None:
        """Seal everything; segments with unsettled rows are closed and left for replay."""
        with self._lock:
            for segment in list(self._open):
                segment.sealed = True
                if segment.settled < segment.written:
                    segment.left_for_replay = True
                    segment.settled = segment.written
                self._finish_if_settled(segment)
            self._active = None

    # Under the lock ---------------------------------------------------------------------------

    def _new_segment(self) -> Segment:
        fd, path = create_locked(self.spool_dir)
        segment = Segment(path=path, fd=fd)
        self._active = segment
        self._open.add(segment)
        return segment

    def _seal(self, segment: Segment) -> None:
        segment.sealed = True
        if self._active is segment:
            self._active = None
        self._finish_if_settled(segment)

    def _finish_if_settled(self, segment: Segment) -> None:
        if segment.closed or not segment.sealed or segment.settled < segment.written:
            return
        if not segment.left_for_replay:
            # Still under our flock, so no other process can be replaying it. If a crash loses the
            # unlink, replay finds every row already stored and inserts nothing.
            segment.path.unlink(missing_ok=True)
        stat = os.fstat(segment.fd)
        os.close(segment.fd)  # drops the flock: a file left for replay is now claimable
        segment.closed = True
        self._open.discard(segment)
        if segment.left_for_replay and self.counter is not None:
            self.counter.let_go(segment.path, stat.st_dev, stat.st_ino, stat.st_size, segment.written)
