"""The bounded queue between `record()` and a writer's task: each request's rows with the future it
waits on, taken in batches, and stop()'s marker behind the last of them.

A full queue refuses at once (the database is slower than the traffic: 503 rather than a pile of
waiting requests); one slot beyond the size is kept for the stop marker. What the task holds while it
works is its batch in flight: if the task fails (service/db/supervisor.py), `crashed()` answers that
batch's requests (RecordUnavailable) and puts back a stop marker the task had taken, so the
restarted task sees it. The marker never leaves this module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from service.records import RecordUnavailable

__all__ = ["Batch", "RecordQueue"]

_STOP = object()

Rows = list[dict[str, Any]]


@dataclass
class Batch:
    """Requests taken together: their rows in order, and whether stop()'s marker came right after."""

    requests: list[tuple[Rows, asyncio.Future]]
    rows: Rows
    last: bool = False

    def answer(self, error: BaseException | None = None) -> None:
        """Release the requests still waiting: on record (no error), or refused with ``error``."""
        for _, done in self.requests:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)


class RecordQueue:
    def __init__(self, size: int, batch_size: int) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError("writer queue_size and batch_size must be at least 1")
        self.size = size
        self.batch_size = batch_size
        self._queue: asyncio.Queue | None = None
        self._in_flight: Batch | None = None
        self._took_stop = False

    def open(self) -> None:
        """At start, in the event loop the writer runs in."""
        self._queue = asyncio.Queue(maxsize=self.size + 1)

    @property
    def is_open(self) -> bool:
        return self._queue is not None

    @property
    def full(self) -> bool:
        return self._queue is not None and self._queue.qsize() >= self.size

    def put(self, rows: Rows) -> asyncio.Future[None]:
        """Queue one request's rows (the caller checked `full`); the future is set once they are on
        record, or refused."""
        assert self._queue is not None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rows, done))
        return done

    def close(self) -> None:
        """stop(): the marker behind everything queued (the writer refuses record() from here on, so
        there is room for it)."""
        assert self._queue is not None
        self._queue.put_nowait(_STOP)

    async def take(self, timeout: float | None = None) -> Batch | None:
        """The next batch: the first request (waited for at most ``timeout`` s, else TimeoutError) and
        whatever else is queued, up to batch_size rows; None when the stop marker comes first. Until
        `done()` it is the task's batch in flight."""
        assert self._queue is not None
        first = await asyncio.wait_for(self._queue.get(), timeout=timeout)
        if first is _STOP:
            return None
        batch = Batch([first], list(first[0]))
        self._in_flight, self._took_stop = batch, False
        while len(batch.rows) < self.batch_size and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if nxt is _STOP:
                self._took_stop = batch.last = True
                break
            batch.requests.append(nxt)
            batch.rows.extend(nxt[0])
        return batch

    def done(self) -> None:
        """The batch in flight is settled."""
        self._in_flight = None

    def crashed(self) -> None:
        """The task failed: the requests of its batch learn their rows may not be on record, and a
        stop marker it had taken is seen again by the restarted task."""
        if self._in_flight is not None:
            self._in_flight.answer(
                RecordUnavailable("the record writer failed while writing this record; it is restarting")
            )
        self._in_flight = None
        if self._took_stop and self._queue is not None:
            self._took_stop = False
            self._queue.put_nowait(_STOP)  # record() refuses after stop(): there is room
