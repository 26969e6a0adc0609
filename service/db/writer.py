"""DurableWriter: the PredictionSink that puts every answered prediction on record.

``record()`` puts the rows on a bounded queue and waits until a background task has either committed
them to the database or appended and fsync'd them to the local spool (service/db/spool.py); only
then may the request be answered. When neither works it raises RecordUnavailable (the service
answers 503): never an answer without a record.

The task takes whatever is queued (up to ``batch_size`` rows) and inserts it in one transaction, in a
worker thread so the event loop never waits on the database. After a failed insert it spools
straight away and only retries the database every ``retry_interval_s``, so an outage does not add a
connect timeout to every request. Once the database answers again the spool is replayed, one file
per step between batches. ``stop()`` drains the queue.

A stalled database (a lock held on the table, a server that accepts but never answers) is bounded
twice: the service's connections carry statement and lock timeouts, and a request whose rows are not
committed within ``record_deadline_s`` spools them itself (a spool file of its own, fsync'd) and is
answered. The writer may still commit the same rows later, or spool them again; replay skips ids
already stored, so the database ends with each row exactly once.

The task is supervised (service/db/supervisor.py): an unexpected exception is logged, the requests of
the batch it was writing get RecordUnavailable (503), and the task restarts; readiness is false until
it runs again. Replay reads spool files as bytes and sets a bad line aside (service/db/quarantine.py)
instead of failing on it; the backlog is a count kept up to date (service/db/backlog.py), never a
pass over the spool per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError

from service.audit_key import AuditKey
from service.db.backlog import SpoolBacklog
from service.db.chain import ChainLink, append_predictions
from service.db.rows import normalise_row
from service.db.spool import Spool, SpoolFile, SpoolLine, UnreadableSpoolFile
from service.db.supervisor import TaskSupervisor
from service.records import RecordUnavailable

__all__ = ["DurableWriter", "NullObserver", "RecordUnavailable", "WriterObserver"]

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 500
_STOP = object()


class WriterObserver(Protocol):
    """Where the writer reports what the metrics show (service/prometheus.py in the service). The last two
    came later: an observer without them is still taken (they then report nothing)."""

    def db_write(self, seconds: float, rows: int) -> None: ...
    def db_failure(self) -> None: ...
    def spool_backlog(self, rows: int) -> None: ...
    def spool_quarantined(self, reason: str, count: int) -> None: ...
    def writer_restarted(self, task: str) -> None: ...


class NullObserver:
    """Reports nothing; subclass it to observe only some figures."""

    def db_write(self, seconds: float, rows: int) -> None:
        pass

    def db_failure(self) -> None:
        pass

    def spool_backlog(self, rows: int) -> None:
        pass

    def spool_quarantined(self, reason: str, count: int) -> None:
        pass

    def writer_restarted(self, task: str) -> None:
        pass


# Errors with which the database refuses a row's values rather than fails (a value it cannot store,
# a parameter the driver cannot send, a value the chain's hashing rejects): the row is set aside.
# Anything else (connection, lock, permission) is the database's trouble: the replay is tried later.
_ROW_REFUSED = (DataError, ValueError, TypeError)


class DurableWriter:
    # Whether the backlog counts only spool files no live process holds (see SpoolFirstWriter).
    _BACKLOG_UNHELD_ONLY = False
    # The name of the task that takes record() requests (a metric label, and what readiness names).
    _TASK = "writer"

    def __init__(
        self,
        engine: Engine,
        spool_dir: str | os.PathLike[str],
        *,
        chain_key: AuditKey,
        queue_size: int = 1024,
        batch_size: int = 256,
        retry_interval_s: float = 2.0,
        rescan_interval_s: float = 30.0,
        record_deadline_s: float | None = None,
        observer: WriterObserver | None = None,
        on_append: Callable[[ChainLink], None] | None = None,
        restart_backoff_s: float = 0.1,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("writer queue_size and batch_size must be at least 1")
        self.engine = engine
        # Keys the chain's links (service/db/chain.py): every replica holds the same audit key.
        self.chain_key = chain_key
        self.observer: WriterObserver = observer or NullObserver()
        # The backlog, counted once at start and then kept up to date (service/db/backlog.py).
        self.backlog = SpoolBacklog(spool_dir, unheld_only=self._BACKLOG_UNHELD_ONLY)
        self.spool = Spool(spool_dir, counter=self.backlog, on_quarantined=self._quarantined)
        # Rows of requests past their deadline, spooled from request threads: a file of its own, so
        # the writer thread and these never write one file at once.
        self._overdue_spool = Spool(spool_dir, counter=self.backlog)
        self._overdue_lock = threading.Lock()
        self.record_deadline_s = record_deadline_s
        self._overdue_since: float | None = None
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.retry_interval_s = retry_interval_s
        self.rescan_interval_s = rescan_interval_s
        self.supervisor = TaskSupervisor(on_restart=self._restarted, first_backoff_s=restart_backoff_s)
        # Told the newest link after every committed append (the chain checkpoints, service/db/anchor.py).
        self.on_append = on_append
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._db_down_since: float | None = None
        self._last_attempt = 0.0
        self._spool_pending = False
        self._stopping = False
        # What the writer task holds while it works, for its crash handler to settle.
        self._in_flight: list[tuple[list, asyncio.Future]] = []
        self._took_stop = False

    @property
    def spool_dir(self) -> Path:
        return self.spool.spool_dir

    def _quarantined(self, reason: str, count: int) -> None:
        report = getattr(self.observer, "spool_quarantined", None)
        if report is not None:
            report(reason, count)

    def _restarted(self, task: str) -> None:
        report = getattr(self.observer, "writer_restarted", None)
        if report is not None:
            report(task)

    # PredictionSink -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size + 1)
        self._stopping = False
        # Spool files left by an earlier run (or a crashed worker) are replayed as soon as possible.
        self._spool_pending = await asyncio.to_thread(self._look_at_the_spool)
        self._task = self.supervisor.start(self._TASK, self._run, self._writer_crashed)

    def _look_at_the_spool(self) -> bool:
        """At start: clear what creators that died left, count the backlog once; whether to replay."""
        self.spool.sweep()
        self.backlog.rescan()
        self._report_backlog()
        return self.spool.has_files()

    async def record(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        # A task waiting to be restarted is still "running": what is queued is taken once it is back.
        if self._queue is None or self._task is None or self._task.done() or self._stopping:
            raise RecordUnavailable("the record writer is not running")
        # A full queue means the database is slower than the traffic: refuse at once (503) rather
        # than let waiting requests pile up. One slot beyond queue_size is kept for stop()'s marker.
        if self._queue.qsize() >= self.queue_size:
            raise RecordUnavailable("the record queue is full")
        rows = [normalise_row(record) for record in records]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, done))
        if self.record_deadline_s is None:
            await done
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), self.record_deadline_s)
        except TimeoutError:
            await asyncio.to_thread(self._spool_overdue, rows)

    async def flush(self, timeout_s: float) -> bool:
        """Every answered record is already committed, or spooled for a database that is not there."""
        return True

    def _spool_overdue(self, rows: list[dict[str, Any]]) -> None:
        """The database missed this request's deadline: put its rows on the spool (fsync'd) so that it
        can be answered. OSError (no spool either) propagates: the request gets its 503."""
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
                self.record_deadline_s,
                self.spool_dir,
            )
        self._spool_pending = True
        self._report_backlog()

    @property
    def not_running(self) -> list[str]:
        """The writer's tasks that are down, waiting to be restarted after a failure ([] when all run,
        and when the writer is not started or was stopped)."""
        return sorted(self.supervisor.down)

    @property
    def degraded(self) -> bool:
        """Records are going to the spool, not the database (it is down or stalled)."""
        return self._db_down_since is not None or self._overdue_since is not None

    async def stop(self) -> None:
        """Write everything already queued, then stop."""
        if self._task is None or self._queue is None:
            return
        self._stopping = True  # from here on record() refuses, so nothing lands behind the marker
        if not self._task.done():
            self._queue.put_nowait(_STOP)
        await self._task
        self._task = None
        await asyncio.to_thread(self.spool.release)
        await asyncio.to_thread(self._release_overdue)

    def _release_overdue(self) -> None:
        with self._overdue_lock:
            self._overdue_spool.release()

    # Readiness ------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Whether a record can be taken now: the writer's tasks run and the database or the spool works."""
        if self._task is None or self._task.done() or self.supervisor.down:
            return False
        if await asyncio.to_thread(self.spool_writable):
            return True
        return await asyncio.to_thread(self.database_reachable)

    def database_reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def spool_writable(self) -> bool:
        return self.spool.writable()

    # The background task --------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            timeout = self.retry_interval_s if self._spool_pending else self.rescan_interval_s
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=timeout)
            except TimeoutError:
                await asyncio.to_thread(self._maintain)
                continue
            if item is _STOP:
                return
            batch, rows, stopping = self._take_batch(item)
            await self._write(batch, rows)
            self._in_flight = []
            if stopping:
                return
            if self._spool_pending and self._db_down_since is None:
                await asyncio.to_thread(self._replay_one)

    def _writer_crashed(self) -> None:
        """The writer task failed: the requests of its batch learn their rows may not be on record,
        and a stop() whose marker it had taken is seen again by the restarted task."""
        _fail(self._in_flight)
        self._in_flight = []
        if self._took_stop and self._queue is not None:
            self._took_stop = False
            self._queue.put_nowait(_STOP)  # record() refuses after stop(): there is room

    def _take_batch(self, first: tuple[list, asyncio.Future]) -> tuple[list, list[dict[str, Any]], bool]:
        """`first` and whatever else is queued, up to batch_size rows: (requests, their rows, whether
        stop()'s marker came next). Until the batch is written it is the task's in-flight batch: a
        failure of the task answers its requests (RecordUnavailable)."""
        assert self._queue is not None
        batch, rows = [first], list(first[0])
        self._in_flight, self._took_stop = batch, False
        while len(rows) < self.batch_size and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is _STOP:
                self._took_stop = True
                return batch, rows, True
            batch.append(nxt)
            rows.extend(nxt[0])
        return batch, rows, False

    async def _write(self, batch: list[tuple[list, asyncio.Future]], rows: list[dict[str, Any]]) -> None:
        try:
            await asyncio.to_thread(self._persist, rows)
        except Exception as exc:  # anything at all: the requests must learn their rows are not on record
            log.error("prediction records could not be written to the database or the spool: %s", exc)
            error = RecordUnavailable(
                "prediction could not be put on record (database and spool unavailable)"
            )
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            return
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    def _persist(self, rows: list[dict[str, Any]]) -> None:
        """Database if it may be up, else the spool. Raises when neither takes the rows."""
        now = time.monotonic()
        if self._db_down_since is None or now - self._last_attempt >= self.retry_interval_s:
            self._last_attempt = now
            if self._insert(rows):
                return
        self.spool.append(rows)  # OSError propagates: nothing took the rows
        self._spool_pending = True
        self._report_backlog()

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

    def _maintain(self) -> None:
        """On idle: notice files other processes left, probe a down database, replay spool files."""
        self.backlog.rescan()
        self._report_backlog()
        if self._db_down_since is not None:
            self._last_attempt = time.monotonic()
            if not self.database_reachable():
                return
            log.warning("database reachable again after %.1f s", time.monotonic() - self._db_down_since)
            self._db_down_since = None
        if not self._spool_pending:
            self._spool_pending = self._replay_pending()
        if self._spool_pending:
            self._replay_one()

    def _replay_one(self) -> None:
        """Replay one spool file into the database (our own active files are released first)."""
        self._release_own()
        try:
            with self.spool.claim_one() as claimed:
                if claimed is None:
                    self._spool_pending = self._replay_pending()  # files locked by others stay theirs
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
            self._spool_pending = self._replay_pending()
            self._report_backlog()

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

    # What a spool-first writer (service/db/spool_first.py) sees differently ------------------

    def _release_own(self) -> None:
        """Let go of this process's spool files, so they can be replayed."""
        self.spool.release()
        self._release_overdue()

    def _replay_pending(self) -> bool:
        return self.spool.has_files()

    def _report_backlog(self) -> None:
        self.observer.spool_backlog(self.backlog.total)


def _fail(batch: list[tuple[list, asyncio.Future]]) -> None:
    error = RecordUnavailable("the record writer failed while writing this record; it is restarting")
    for _, done in batch:
        if not done.done():
            done.set_exception(error)


def _refuses_the_row(exc: SQLAlchemyError) -> bool:
    """A DataError (a value the column cannot hold), or a parameter the driver could not even send (a
    StatementError that is not the database's own DBAPIError)."""
    return isinstance(exc, DataError) or (isinstance(exc, StatementError) and not isinstance(exc, DBAPIError))


def _brief(exc: SQLAlchemyError) -> str:
    """The first line of the driver's message: enough to diagnose, never the statement or its values."""
    cause = getattr(exc, "orig", None) or exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}"
