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
it runs again.

Made of a WriterCore (service/db/writer_core.py): the request queue, the store that inserts, spools
and replays, the supervisor, and the life of the task that takes requests. SpoolFirstWriter
(service/db/spool_first.py) is made of the same parts, not of this class.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from service.audit_key import AuditKey
from service.db.chain import ChainLink
from service.db.observer import WriterObserver
from service.db.rows import normalise_row
from service.db.writer_core import WriterCore
from service.records import RecordUnavailable

__all__ = ["DurableWriter", "RecordUnavailable"]

# The name of the task that takes record() requests (a metric label, and what readiness names).
_TASK = "writer"


class DurableWriter:
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
        )
        self.requests, self.store, self.supervisor = self.core.requests, self.core.store, self.core.supervisor
        self.record_deadline_s = record_deadline_s
        self.retry_interval_s = retry_interval_s
        self.rescan_interval_s = rescan_interval_s

    @property
    def spool_dir(self) -> Path:
        return self.store.spool_dir

    # PredictionSink -------------------------------------------------------------------------

    async def start(self) -> None:
        if await self.core.open():
            self.core.start_front(_TASK, self._run, self.requests.crashed)

    async def record(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.core.admit()
        rows = [normalise_row(record) for record in records]
        done = self.requests.put(rows)
        if self.record_deadline_s is None:
            await done
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), self.record_deadline_s)
        except TimeoutError:
            await asyncio.to_thread(self.store.spool_overdue, rows, self.record_deadline_s)

    async def flush(self, timeout_s: float) -> bool:
        """Every answered record is already committed, or spooled for a database that is not there."""
        return True

    @property
    def not_running(self) -> list[str]:
        """The writer's tasks that are down, waiting to be restarted after a failure ([] when all run,
        and when the writer is not started or was stopped)."""
        return self.core.not_running

    @property
    def degraded(self) -> bool:
        """Records are going to the spool, not the database (it is down or stalled)."""
        return self.store.degraded

    async def stop(self) -> None:
        """Write everything already queued, then stop."""
        await self.core.drain()

    async def ready(self) -> bool:
        """Whether a record can be taken now: the writer's task runs and the database or the spool works."""
        return await self.core.ready()

    # The background task --------------------------------------------------------------------

    async def _run(self) -> None:
        store = self.store
        while True:
            timeout = self.retry_interval_s if store.spool_pending else self.rescan_interval_s
            try:
                batch = await self.requests.take(timeout)
            except TimeoutError:
                await asyncio.to_thread(store.maintain)
                continue
            if batch is None:
                return
            try:
                await store.commit_or_spool(batch.rows)
            except RecordUnavailable as exc:
                batch.answer(exc)
            else:
                batch.answer()
            self.requests.done()
            if batch.last:
                return
            if store.spool_pending and not store.database_down:
                await asyncio.to_thread(store.replay_one)
