"""SpoolFirstWriter: an answer waits for its rows to be fsync'd to the local journal, not for the
database commit; the insert follows in the background (``KDOCT_RECORD_ACK=spool``).

Two tasks. The journal task takes whatever requests are queued, appends their rows to the journal
(service/db/journal.py) with one write and one fsync (group commit), and releases those requests.
The insert task takes the journaled rows from memory, gathers what arrives within ``coalesce_s``
(0.25 s; a read waiting for its row cuts the wait), inserts them into the database in one transaction
(ids are new, so no lookups), and tells the journal, which unlinks a sealed segment once every row in
it is committed. Rows not inserted from memory (the database is down, or more than ``memory_rows``
are waiting) stay in their segment, which is then closed and replayed by the ordinary spool replay
(service/db/store.py): it skips the ids the database already has, so each row ends up there exactly
once, whether the process lives, stops, or crashes between the fsync and the commit.

If the journal cannot be written (disk full, read-only volume), a batch falls back to what
DurableWriter does: commit to the database (or spool) before answering, else 503.

Made of the same parts as DurableWriter (service/db/writer.py), not derived from it: a WriterCore
(service/db/writer_core.py: the request queue, the store holding the journal, the supervisor, the
journal task's life).

Both tasks are supervised (service/db/supervisor.py). If the journal task fails, the requests of its
batch that were not answered get RecordUnavailable, and rows it had journaled but not handed on are
left for replay; if the insert task fails, the rows it was inserting are left for replay. Either way
the task restarts, and readiness is false until it runs again: an answer never goes out for a row
that nothing will insert.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from service.audit_key import AuditKey
from service.db.chain import ChainLink
from service.db.journal import Journal, Segment
from service.db.observer import WriterObserver
from service.db.record_queue import Batch
from service.db.rows import normalise_row
from service.db.writer_core import WriterCore
from service.records import RecordUnavailable

__all__ = ["SpoolFirstWriter"]

log = logging.getLogger(__name__)

_QUIET_S = 1.0  # no insert for this long: the journal's current segment is let go
# The insert task's queue: journaled rows, and these markers (private to this module).
_STOP = object()  # stop() reached the journal task: insert what is queued, then end
_REPLAY = object()  # wakes the insert task: rows were left for replay
_FLUSH = object()  # a read waits for its row: insert what is gathered now
_Journaled = tuple[Segment, list[dict[str, Any]]]


class SpoolFirstWriter:
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
        segment_bytes: int = 4 << 20,
        memory_rows: int | None = None,
        coalesce_s: float = 0.25,
    ) -> None:
        if record_deadline_s is not None:
            raise ValueError("a spool-first writer never waits for the database: no record deadline")
        self.core = WriterCore(
            engine,
            spool_dir,
            chain_key=chain_key,
            queue_size=queue_size,
            batch_size=batch_size,
            retry_interval_s=retry_interval_s,
            observer=observer,
            on_append=on_append,
            restart_backoff_s=restart_backoff_s,
            journal_segment_bytes=segment_bytes,
        )
        self.requests, self.store, self.supervisor = self.core.requests, self.core.store, self.core.supervisor
        self.journal: Journal = self.store.journal
        self.batch_size = batch_size
        self.retry_interval_s = retry_interval_s
        self.rescan_interval_s = rescan_interval_s
        # Journaled rows waiting for their insert, at most; beyond it they are replayed from the file.
        self.memory_rows = memory_rows if memory_rows is not None else 4 * queue_size
        # An insert waits this long for more journaled rows to share its transaction (flush() cuts it).
        self.coalesce_s = coalesce_s
        self._inserts: asyncio.Queue | None = None
        self._insert_task: asyncio.Task | None = None
        self._in_memory = 0
        self._memory_lock = threading.Lock()  # taken by the insert task's thread too
        self._handed_over: asyncio.Event | None = None
        # What the tasks hold while they work, for their crash handlers to settle: rows journaled and
        # not yet handed to the insert task; rows the insert task took and has not settled.
        self._unhanded: tuple[Segment, int] | None = None
        self._inserting: list[_Journaled] = []
        self._insert_took_stop = False

    @property
    def spool_dir(self) -> Path:
        return self.store.spool_dir

    # PredictionSink -------------------------------------------------------------------------

    async def start(self) -> None:
        if not await self.core.open():
            return
        self._inserts = asyncio.Queue()
        self._handed_over = asyncio.Event()
        self._handed_over.set()
        self.core.start_front("journal", self._run, self._journal_crashed)
        self._insert_task = self.supervisor.start("insert", self._insert_loop, self._insert_crashed)

    async def record(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.core.admit()
        await self.requests.put([normalise_row(record) for record in records])

    async def stop(self) -> None:
        """Journal everything queued, insert what the database takes, leave the rest for replay."""
        await self.core.drain()  # the journal task ends once the insert task has
        self._insert_task = None
        await asyncio.to_thread(self.journal.close)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every row journaled so far has been inserted (or left for replay): a read that
        follows an answer in this process then finds its row. False if that took longer than timeout_s."""
        if self._handed_over is None:
            return True
        if not self._handed_over.is_set() and self._inserts is not None:
            self._inserts.put_nowait(_FLUSH)  # the insert task stops gathering and inserts now
        try:
            await asyncio.wait_for(self._handed_over.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def not_running(self) -> list[str]:
        """The writer's tasks that are down, waiting to be restarted after a failure ([] when all run,
        and when the writer is not started or was stopped)."""
        return self.core.not_running

    @property
    def degraded(self) -> bool:
        """Records are going to the spool, not the database (it is down)."""
        return self.store.degraded

    async def ready(self) -> bool:
        """Whether a record can be taken now: the writer's tasks run and the database or the spool works."""
        return await self.core.ready()

    # The journal task ------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._inserts is not None
        stopping = False
        while not stopping:
            batch = await self.requests.take()
            if batch is None:
                break
            stopping = batch.last
            await self._journal(batch)
            self.requests.done()
        self._inserts.put_nowait(_STOP)
        if self._insert_task is not None:
            await self._insert_task

    async def _journal(self, batch: Batch) -> None:
        rows = batch.rows
        try:
            segment = await asyncio.to_thread(self.journal.append, rows)
        except OSError as exc:
            log.error("journal in %s not writable (%s); committing before answering", self.spool_dir, exc)
            try:  # the database, else a 503 for each request
                await self.store.commit_or_spool(rows)
            except RecordUnavailable as error:
                batch.answer(error)
            else:
                batch.answer()
            return
        self._unhanded = (segment, len(rows))
        batch.answer()
        self._hand_over(segment, rows)
        self._unhanded = None

    def _journal_crashed(self) -> None:
        if self._unhanded is not None:
            segment, count = self._unhanded
            self._unhanded = None
            self.journal.leave_for_replay(segment, count)
            self.store.spool_pending = True
        self.requests.crashed()

    def _hand_over(self, segment: Segment, rows: list[dict[str, Any]]) -> None:
        assert self._inserts is not None and self._handed_over is not None
        if self._in_memory + len(rows) > self.memory_rows:
            # The database is slower than the traffic: these rows are replayed from the file instead
            # of piling up in memory.
            self.journal.leave_for_replay(segment, len(rows))
            if not self.store.spool_pending:
                self.store.spool_pending = True
                self._inserts.put_nowait(_REPLAY)  # the insert task may be waiting out a long timeout
            return
        with self._memory_lock:
            self._in_memory += len(rows)
        self._handed_over.clear()
        self._inserts.put_nowait((segment, rows))

    # The insert task ---------------------------------------------------------------------------

    async def _insert_loop(self) -> None:
        assert self._inserts is not None and self._handed_over is not None
        stopping = False
        last_maintained = time.monotonic()
        while not stopping:
            interval = self.retry_interval_s if self.store.spool_pending else self.rescan_interval_s
            timeout = max(0.0, min(_QUIET_S, last_maintained + interval - time.monotonic()))
            try:
                item = await asyncio.wait_for(self._inserts.get(), timeout=timeout)
            except TimeoutError:
                # Quiet: let the current segment go (every row in it is in the database, so it is
                # unlinked); probe a down database and replay only once per interval.
                await asyncio.to_thread(self.journal.seal_active)
                if time.monotonic() - last_maintained >= interval:
                    await asyncio.to_thread(self.store.maintain)
                    last_maintained = time.monotonic()
                continue
            if item is _STOP:
                break
            if item is _REPLAY:
                await asyncio.to_thread(self._idle)
                last_maintained = time.monotonic()
                continue
            if item is _FLUSH:
                continue  # nothing was waiting
            stopping = self._insert_took_stop = await self._gather(item)
            await asyncio.to_thread(self._insert_journaled)
            self._note_handed_over()
            if self.store.spool_pending and not self.store.database_down:
                await asyncio.to_thread(self.store.replay_one)

    def _note_handed_over(self) -> None:
        assert self._handed_over is not None
        if self._in_memory == 0:
            self._handed_over.set()

    def _insert_crashed(self) -> None:
        """The insert task failed: the rows it held are left for replay (those it did insert are
        skipped by it), and a stop marker it had taken is seen again by the restarted task."""
        self._settle(inserted=False)
        self._note_handed_over()
        if self._insert_took_stop and self._inserts is not None:
            self._insert_took_stop = False
            self._inserts.put_nowait(_STOP)

    async def _gather(self, first: _Journaled) -> bool:
        """`first` and what else arrives within coalesce_s, up to batch_size rows, for one transaction
        (into self._inserting): the database shares the cores with inference, and one commit for several
        answers costs it less. A read waiting for its row (flush) or stop ends the wait. Returns whether
        stop's marker came."""
        assert self._inserts is not None
        items, count = self._inserting, len(first[1])
        items.append(first)
        deadline = time.monotonic() + self.coalesce_s
        while count < self.batch_size:
            if self._inserts.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._inserts.get(), remaining)
                except TimeoutError:
                    break
            else:
                nxt = self._inserts.get_nowait()
            if nxt is _STOP:
                return True
            if nxt is _FLUSH:
                break
            if nxt is _REPLAY:
                continue  # replayed after this batch anyway (the store's spool_pending is set)
            items.append(nxt)
            count += len(nxt[1])
        return False

    def _insert_journaled(self) -> None:
        self._settle(self.store.try_insert([row for _, rows in self._inserting for row in rows]))

    def _settle(self, inserted: bool) -> None:
        """Tell the journal where each row the insert task took went: into the database, or (not
        inserted) to replay."""
        while self._inserting:
            segment, rows = self._inserting[0]
            if inserted:
                self.journal.committed(segment, len(rows))
            else:
                self.journal.leave_for_replay(segment, len(rows))
            self._inserting.pop(0)
            with self._memory_lock:
                self._in_memory -= len(rows)
        if not inserted:
            self.store.spool_pending = True
            self.store.report_backlog()

    def _idle(self) -> None:
        """Nothing to insert: let the current segment go (it is unlinked, every row being in the
        database), then probe a down database and replay what waits."""
        self.journal.seal_active()
        self.store.maintain()
