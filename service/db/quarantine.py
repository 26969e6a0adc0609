"""The spool's quarantine (``<spool dir>/quarantine/``): what replay cannot insert, set aside and kept.

A spool line that is not a prediction row (not UTF-8, not JSON, not a row the table would take, a
line cut short by a crash) or a spool file that cannot be read must not stop the rows after it or in
other files. Such a line is copied, as it was, to ``quarantine/<spool file>.bad-lines`` once the good
rows of its file are in the database (just before the file is removed); a file that cannot be read
is moved there whole. Nothing there is ever deleted by the service: it is for an operator to look
at. Each line (or file) is counted in ``kdoct_spool_quarantined_total{reason}`` and logged at ERROR
with the file's name, its line numbers and the reasons: never a line's content.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from service.db.spool_files import FILE_MODE, ensure_dir, fsync_dir, write_all

__all__ = ["QUARANTINE_REASONS", "Quarantine", "QuarantinedLines"]

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
# Metric label values (a bounded set): rows.BAD_LINE_REASONS, then what the spool's reader adds.
QUARANTINE_REASONS = (
    "undecodable",  # not UTF-8
    "not_json",
    "not_a_row",  # JSON, but not a value the predictions table takes
    "too_long",  # longer than any row can be
    "incomplete",  # the last line, cut short by a crash (its request was never answered)
    "refused",  # the database refused the row on its own
    "unreadable_file",  # a whole file that could not be opened or read (counted once)
)
_LINE_NUMBERS_LOGGED = 20

OnQuarantined = Callable[[str, int], None]


class Quarantine:
    def __init__(self, spool_dir: Path, on_quarantined: OnQuarantined | None = None) -> None:
        self.directory = spool_dir / QUARANTINE_DIR
        self.on_quarantined = on_quarantined

    def lines_of(self, spool_file: Path) -> QuarantinedLines:
        return QuarantinedLines(self, spool_file)

    def set_aside(self, path: Path, error: OSError) -> bool:
        """Move a spool file that cannot be read into the quarantine, whole; False if even that failed
        (the caller then leaves the file alone)."""
        try:
            ensure_dir(self.directory)
            os.rename(path, self.directory / path.name)
            fsync_dir(self.directory)
        except FileNotFoundError:
            return True  # replayed by another process meanwhile
        except OSError as exc:
            log.error(
                "spool file %s cannot be read (%s) nor moved to %s (%s); leaving it where it is",
                path.name, type(error).__name__, self.directory, type(exc).__name__,
            )  # fmt: skip
            return False
        log.error(
            "spool file %s cannot be read (%s: %s); moved to %s",
            path.name, type(error).__name__, error.strerror, self.directory,
        )  # fmt: skip
        self._count("unreadable_file", 1)
        return True

    def _count(self, reason: str, lines: int) -> None:
        if self.on_quarantined is not None:
            self.on_quarantined(reason, lines)


class QuarantinedLines:
    """The bad lines of one spool file, written to a temporary file in the quarantine as they are met;
    it becomes ``<spool file>.bad-lines`` only when committed (the good rows being in the database), so
    a replay that fails half-way and is done again counts each line once."""

    def __init__(self, quarantine: Quarantine, spool_file: Path) -> None:
        self.quarantine = quarantine
        self.spool_file = spool_file
        self.reasons: Counter[str] = Counter()
        self.line_numbers: list[tuple[int, str]] = []
        self._fd: int | None = None
        self._temporary: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def add(self, number: int, reason: str, raw: bytes) -> None:
        """Line `number` is bad for `reason`; `raw` is its bytes (newline included, if it had one)."""
        self.reasons[reason] += 1
        if len(self.line_numbers) < _LINE_NUMBERS_LOGGED:
            self.line_numbers.append((number, reason))
        self.more(raw)

    def more(self, raw: bytes) -> None:
        """More bytes of the line just added (an over-long line arrives in pieces)."""
        write_all(self._file(), raw)

    def commit(self) -> None:
        """Make the lines durable under their final name, then count and log them."""
        if self._fd is None or self._temporary is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        final = self.quarantine.directory / f"{self.spool_file.name}.bad-lines"
        os.rename(self._temporary, final)  # a replay done again after a crash writes the same lines
        fsync_dir(self.quarantine.directory)
        self._temporary = None
        total = sum(self.reasons.values())
        log.error(
            "spool %s: %d line(s) could not be replayed and were moved to %s (%s; line %s); "
            "the file's other rows were replayed",
            self.spool_file.name,
            total,
            final,
            ", ".join(f"{reason}: {count}" for reason, count in sorted(self.reasons.items())),
            ", ".join(f"{number} {reason}" for number, reason in self.line_numbers)
            + (", ..." if total > len(self.line_numbers) else ""),
        )
        for reason, count in self.reasons.items():
            self.quarantine._count(reason, count)

    def discard(self) -> None:
        """The replay did not finish: the spool file keeps every line, so the copy goes."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
            self._temporary = None

    def _file(self) -> int:
        if self._fd is None:
            ensure_dir(self.quarantine.directory)
            self._temporary = self.quarantine.directory / f".tmp-{uuid.uuid4().hex}-{self.spool_file.name}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(self._temporary, flags, FILE_MODE)
        return self._fd
