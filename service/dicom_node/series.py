"""Instances grouped by series until the series goes quiet: a modality sends a volume as one or many
instances, over one or several associations, and the series is classified once, after no instance of
it has arrived for KDOCT_DICOM_SERIES_IDLE_S.

Called from the association threads (add) and the event loop (due, retry, done): one lock. A series
also counts its frames, so that an instance that would take it beyond KDOCT_MAX_FRAMES is refused when
it arrives (a failure status the sender sees), not after the series has been accepted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PendingSeries", "SeriesTracker"]


@dataclass
class PendingSeries:
    key: str
    caller: str  # the calling AE title of its latest instance: whose request it is
    paths: dict[Path, int] = field(default_factory=dict)  # stored file -> its frames
    last_seen: float = 0.0
    not_before: float = 0.0  # a series refused for load waits until then
    in_progress: bool = False

    @property
    def frames(self) -> int:
        return sum(self.paths.values())


class SeriesTracker:
    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._series: dict[str, PendingSeries] = {}
        self._lock = threading.Lock()

    def frames(self, key: str) -> int:
        with self._lock:
            series = self._series.get(key)
            return 0 if series is None else series.frames

    def add(self, key: str, path: Path, frames: int, caller: str) -> None:
        with self._lock:
            series = self._series.setdefault(key, PendingSeries(key, caller))
            series.paths[path] = frames
            series.caller = caller
            series.last_seen = time.monotonic()

    def due(self) -> list[PendingSeries]:
        """Series idle long enough and not being classified; marked in progress."""
        now = time.monotonic()
        with self._lock:
            ready = [
                series
                for series in self._series.values()
                if not series.in_progress
                and now - series.last_seen >= self.idle_s
                and now >= series.not_before
            ]
            for series in ready:
                series.in_progress = True
            return ready

    def retry_later(self, key: str, delay_s: float) -> None:
        with self._lock:
            series = self._series[key]
            series.in_progress = False
            series.not_before = time.monotonic() + delay_s

    def done(self, key: str, paths: list[Path]) -> bool:
        """The series' `paths` are classified. True when nothing else of it arrived meanwhile (the series
        is finished); else the newer instances stay and are classified as the series once it is idle
        again."""
        with self._lock:
            series = self._series[key]
            for path in paths:
                series.paths.pop(path, None)
            series.in_progress = False
            if series.paths:
                return False
            del self._series[key]
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._series)
