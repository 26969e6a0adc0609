"""RecordStore: where both record writers put rows. The database (the chain's append, service/db/chain.py)
when it may be up, else the local fsync'd spool (service/db/spool.py); the spool replayed into the
database once it answers again, one file per step, ids already stored skipped.

After a failed insert the store only retries the database every ``retry_interval_s``, so an outage
does not add a connect timeout to every batch. Replay reads spool files as bytes and sets a bad line
aside (service/db/quarantine.py) instead of failing on it; a row the database refuses on its own is
found by halving its chunk and set aside too. The backlog is a count kept up to date
(service/db/backlog.py), never a pass over the spool per batch.

The store holds this process's local files and the one backlog that counts them: the spool, the
spool of requests past their deadline (DurableWriter's record_deadline_s), and for a spool-first
writer its journal (service/db/journal.py), whose segments left for replay are replayed like spool
files and counted in the backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError

from service.audit_key import AuditKey
from service.db.backlog import SpoolBacklog
from service.db.chain import ChainLink, append_predictions
from service.db.journal import Journal
from service.db.observer import NullObserver, WriterObserver
from service.db.spool import Spool, SpoolFile, SpoolLine, UnreadableSpoolFile
from service.records import RecordUnavailable

__all__ = ["RecordStore"]

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 500

# Errors with which the database refuses a row's values rather than fails (a value it cannot store,
# a parameter the driver cannot send, a value the chain's hashing rejects): the row is set aside.
# Anything else (connection, lock, permission) is the database's trouble: the replay is tried later.
_ROW_REFUSED = (DataError, ValueError, TypeError)


class RecordStore:
    def __init__(
        self,
        engine: Engine,
        spool_dir: str | os.PathLike[str],
        *,
        chain_key: AuditKey,
        retry_interval_s: float = 2.0,
        observer: WriterObserver | None = None,
        on_append: Callable[[ChainLink], None] | None = None,
        journal_segment_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        # Keys the chain's links (service/db/chain.py): every replica holds the same audit key.
        self.chain_key = chain_key
        self.retry_interval_s = retry_interval_s
        self.observer: WriterObserver = observer or NullObserver()
        # Told the newest link after every committed append (the chain checkpoints, service/db/anchor.py).
        self.on_append = on_append
        # The backlog, counted once at start and then kept up to date. With a journal, live journals
        # (ours and other workers') are held while their rows are on their way from memory: only
        # files no live process holds count.
        self.backlog = SpoolBacklog(spool_dir, unheld_only=journal_segment_bytes is not None)
        self.spool = Spool(spool_dir, counter=self.backlog, on_quarantined=self._quarantined)
        self.journal = (
            None
            if journal_segment_bytes is None
            else Journal(self.spool.spool_dir, segment_bytes=journal_segment_bytes, counter=self.backlog)
        )
        # Rows of requests past their deadline, spooled from request threads: a file of its own, so
        # the writer thread and these never write one file at once.
        self._overdue_spool = Spool(spool_dir, counter=self.backlog)
        self._overdue_lock = threading.Lock()
        self._overdue_since: float | None = None
        self._db_down_since: float | None = None
        self._last_attempt = 0.0
        # Whether spool files (or journal segments) wait for a replay.
        self.spool_pending = False

    @property
    def spool_dir(self) -> Path:
        return self.spool.spool_dir

    @property
    def database_down(self) -> bool:
        return self._db_down_since is not None

    @property
    def degraded(self) -> bool:
        """Records are going to the spool, not the database (it is down or stalled)."""
        return self._db_down_since is not None or self._overdue_since is not None

    def _quarantined(self, reason: str, count: int) -> None:
        report = getattr(self.observer, "spool_quarantined", None)
        if report is not None:
            report(reason, count)

    # Start and stop ---------------------------------------------------------------------------

    def look_at_the_spool(self) -> None:
        """At start: clear what creators that died left, count the backlog once; replay what is there
        as soon as possible (spool files left by an earlier run, or a crashed worker)."""
        self.spool.sweep()
        self.backlog.rescan()
        self.report_backlog()
        self.spool_pending = self.spool.has_files()

    def release(self) -> None:
        """At stop: let go of this process's spool files (a journal is closed by its writer)."""
        self.spool.release()
        self._release_overdue()

    def _release_overdue(self) -> None:
        with self._overdue_lock:
            self._overdue_spool.release()

    # Readiness --------------------------------------------------------------------------------

    async def can_take(self) -> bool:
        """Whether rows can be taken now: the spool, or else the database, works."""
        if await asyncio.to_thread(self.spool.writable):
            return True
        return await asyncio.to_thread(self.database_reachable)

    def database_reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    # Putting rows on record -------------------------------------------------------------------

    async def commit_or_spool(self, rows: list[dict[str, Any]]) -> None:
        """The database if it may be up, else the spool, in a worker thread; RecordUnavailable when
        neither takes the rows."""
        try:
            await asyncio.to_thread(self._persist, rows)
        except Exception as exc:  # anything at all: the requests must learn their rows are not on record
            log.error("prediction records could not be written to the database or the spool: %s", exc)
            raise RecordUnavailable(
                "prediction could not be put on record (database and spool unavailable)"
            ) from None

    def _persist(self, rows: list[dict[str, Any]]) -> None:
        if self.try_insert(rows):
            return
        self.spool.append(rows)  # OSError propagates: nothing took the rows
        self.spool_pending = True
        self.report_backlog()

    def try_insert(self, rows: list[dict[str, Any]]) -> bool:
        """Insert ``rows`` unless the database is down and was tried less than retry_interval_s ago;
        whether they are in."""
        now = time.monotonic()
        if self._db_down_since is None or now - self._last_attempt >= self.retry_interval_s:
            self._last_attempt = now
            return self._insert(rows)
        return False

    def _insert(self, rows: list[dict[str, Any]]) -> bool:
        started = time.perf_counter()
        try:
            # Live rows carry ids generated for this request: nothing to look up. Replays (below) do.
            appended = append_predictions(self.engine, rows, key=self.chain_key, new_ids=True)
        except SQLAlchemyError as exc:
            self.observer.db_failure()
            if self._db_down_since is None:
                self._db_down_since = time.monotonic()
                log.warning("database write failed (%s); spooling records to %s", _brief(exc), self.spool_dir)
            return False
        self.observer.db_write(time.perf_counter() - started, len(rows))
        self._appended(appended.head)
        if self._db_down_since is not None:
            log.warning("database back after %.1f s", time.monotonic() - self._db_down_since)
            self._db_down_since = None
        if self._overdue_since is not None:
            log.warning("database committing again after %.1f s", time.monotonic() - self._overdue_since)
            self._overdue_since = None
        return True

    def _appended(self, head: ChainLink | None) -> None:
        if head is not None and self.on_append is not None:
            self.on_append(head)

    def spool_overdue(self, rows: list[dict[str, Any]], deadline_s: float) -> None:
        """The database missed a request's deadline: put its rows on the spool (fsync'd) so that it
        can be answered. OSError (no spool either) propagates as RecordUnavailable: the request gets
        its 503."""
        try:
            with self._overdue_lock:
                self._overdue_spool.append(rows)
        except OSError as exc:
            raise RecordUnavailable(
                "prediction could not be put on record (database stalled, spool unavailable)"
            ) from exc
        if self._overdue_since is None:
            self._overdue_since = time.monotonic()
            log.warning(
                "database did not commit a record within %.1f s; spooling overdue records to %s",
                deadline_s,
                self.spool_dir,
            )
        self.spool_pending = True
        self.report_backlog()

    # Replay -----------------------------------------------------------------------------------

    def maintain(self) -> None:
        """On idle: notice files other processes left, probe a down database, replay spool files."""
        self.backlog.rescan()
        self.report_backlog()
        if self._db_down_since is not None:
            self._last_attempt = time.monotonic()
            if not self.database_reachable():
                return
            log.warning("database reachable again after %.1f s", time.monotonic() - self._db_down_since)
            self._db_down_since = None
        if not self.spool_pending:
            self.spool_pending = self._replay_pending()
        if self.spool_pending:
            self.replay_one()

    def replay_one(self) -> None:
        """Replay one spool file into the database (our own active files are released first)."""
        self._release_own()
        try:
            with self.spool.claim_one() as claimed:
                if claimed is None:
                    self.spool_pending = self._replay_pending()  # files locked by others stay theirs
                    return
                started = time.perf_counter()
                replayed = 0
                for chunk in claimed.chunks(_REPLAY_CHUNK):
                    replayed += self._replay_chunk(claimed, chunk)
                claimed.remove()
                self.observer.db_write(time.perf_counter() - started, replayed)
                log.info("replayed %d spooled records from %s", replayed, claimed.path.name)
        except UnreadableSpoolFile as exc:
            self.spool.set_aside(exc.path, exc.error)
        except SQLAlchemyError as exc:
            self.observer.db_failure()
            self._db_down_since = self._db_down_since or time.monotonic()
            log.warning("spool replay failed (%s); will retry", _brief(exc))
        except OSError as exc:
            log.error("spool replay could not read %s: %s", self.spool_dir, exc)
        finally:
            self.spool_pending = self._replay_pending()
            self.report_backlog()

    def _replay_chunk(self, claimed: SpoolFile, lines: list[SpoolLine]) -> int:
        """Insert these rows of a spool file (those already stored are skipped). A row the database
        refuses on its own is found by halving the chunk and set aside; the others go in. Returns
        how many rows were taken (inserted or found stored)."""
        try:
            rows = [line.row for line in lines]
            self._appended(append_predictions(self.engine, rows, key=self.chain_key).head)
            return len(lines)
        except SQLAlchemyError as exc:
            if not _refuses_the_row(exc):
                raise
        except _ROW_REFUSED:
            pass
        if len(lines) == 1:
            claimed.refused(lines[0])
            return 0
        half = len(lines) // 2
        return self._replay_chunk(claimed, lines[:half]) + self._replay_chunk(claimed, lines[half:])

    def _release_own(self) -> None:
        """Let go of this process's spool files (and journal segments left for replay), so they can be
        replayed."""
        self.spool.release()
        self._release_overdue()
        if self.journal is not None:
            self.journal.seal_active(only_if_left_for_replay=True)

    def _replay_pending(self) -> bool:
        if self.journal is None:
            return self.spool.has_files()
        # Our own journal and other processes' are always there and held: only a file nobody holds
        # (a crashed process's, or one of ours left for replay) needs replaying.
        return self.journal.awaiting_replay() or self.spool.claimable()

    def report_backlog(self) -> None:
        if self.journal is None:
            self.observer.spool_backlog(self.backlog.total)
            return
        # Files nobody holds (crashed processes', ours closed for replay) and our own segments whose
        # rows were left for replay; not the journals whose rows are on their way from memory.
        self.observer.spool_backlog(self.backlog.total + self.journal.rows_awaiting_replay())


def _refuses_the_row(exc: SQLAlchemyError) -> bool:
    """A DataError (a value the column cannot hold), or a parameter the driver could not even send (a
    StatementError that is not the database's own DBAPIError)."""
    return isinstance(exc, DataError) or (isinstance(exc, StatementError) and not isinstance(exc, DBAPIError))


def _brief(exc: SQLAlchemyError) -> str:
    """The first line of the driver's message: enough to diagnose, never the statement or its values."""
    cause = getattr(exc, "orig", None) or exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"
