"""What both record writers are made of and do alike: the request queue (record_queue.py), the store
that inserts, spools and replays (store.py), the supervisor of their tasks, and the life of the front
task that takes record() requests: opening, refusing requests it cannot take, draining on stop,
readiness. DurableWriter (writer.py) and SpoolFirstWriter (spool_first.py) each hold one and differ
only in what their tasks do with a batch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

from service.audit_key import AuditKey
from service.db.chain import ChainLink
from service.db.observer import WriterObserver
from service.db.record_queue import RecordQueue
from service.db.store import RecordStore
from service.db.supervisor import TaskSupervisor
from service.records import RecordUnavailable

__all__ = ["WriterCore"]


class WriterCore:
    def __init__(
        self,
        engine: Engine,
        spool_dir: str | os.PathLike[str],
        *,
        chain_key: AuditKey,
        queue_size: int,
        batch_size: int,
        retry_interval_s: float,
        observer: WriterObserver | None,
        on_append: Callable[[ChainLink], None] | None,
        restart_backoff_s: float,
        journal_segment_bytes: int | None = None,
    ) -> None:
        self.requests = RecordQueue(queue_size, batch_size)
        self.store = RecordStore(
            engine,
            spool_dir,
            chain_key=chain_key,
            retry_interval_s=retry_interval_s,
            observer=observer,
            on_append=on_append,
            journal_segment_bytes=journal_segment_bytes,
        )
        self.supervisor = TaskSupervisor(on_restart=self._restarted, first_backoff_s=restart_backoff_s)
        self.front: asyncio.Task | None = None  # the task that takes record() requests
        self.stopping = False

    def _restarted(self, task: str) -> None:
        report = getattr(self.store.observer, "writer_restarted", None)
        if report is not None:
            report(task)

    async def open(self) -> bool:
        """Take requests again and look at what the spool holds; False when already open."""
        if self.front is not None:
            return False
        self.requests.open()
        self.stopping = False
        await asyncio.to_thread(self.store.look_at_the_spool)
        return True

    def start_front(self, name: str, run: Callable[[], Awaitable[None]], crashed: Callable[[], None]) -> None:
        self.front = self.supervisor.start(name, run, crashed)

    def admit(self) -> None:
        """Raise RecordUnavailable (503) for a request the writer cannot take now."""
        # A task waiting to be restarted is still "running": what is queued is taken once it is back.
        if not self.requests.is_open or self.front is None or self.front.done() or self.stopping:
            raise RecordUnavailable("the record writer is not running")
        # A full queue means the database (or the journal's disk) is slower than the traffic: refuse at
        # once rather than let waiting requests pile up.
        if self.requests.full:
            raise RecordUnavailable("the record queue is full")

    async def drain(self) -> bool:
        """Refuse new requests, let the front task finish what is queued, release the store; False when
        it was not running."""
        if self.front is None or not self.requests.is_open:
            return False
        self.stopping = True  # from here on record() refuses, so nothing lands behind the marker
        if not self.front.done():
            self.requests.close()
        await self.front
        self.front = None
        await asyncio.to_thread(self.store.release)
        return True

    @property
    def not_running(self) -> list[str]:
        return sorted(self.supervisor.down)

    async def ready(self) -> bool:
        if self.front is None or self.front.done() or self.supervisor.down:
            return False
        return await self.store.can_take()
