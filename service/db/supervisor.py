"""Supervision of the record writers' background tasks.

A writer task that dies of an unexpected exception used to die silently: answers went on (their rows
journaled, never inserted), or every request got 503, and readiness still said ready (issue 23,
case 3). A supervised task is restarted instead: the exception is logged at ERROR with its traceback,
counted (``kdoct_record_writer_restarts_total{task}``), the task's own crash handler settles what it
was holding (requests waiting on it get their answer, rows it held go to replay), and after a short
backoff (doubling from 0.1 s to 5 s, so a task that keeps failing never spins) the task runs again.
While it waits to restart it is reported down, and /health/ready says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["TaskSupervisor"]

log = logging.getLogger(__name__)

# A task that ran this long before failing starts its backoff over.
_HEALTHY_RUN_S = 30.0


class TaskSupervisor:
    def __init__(
        self,
        *,
        on_restart: Callable[[str], None],
        first_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.on_restart = on_restart
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.down: set[str] = set()  # names of tasks waiting to be restarted

    def start(
        self, name: str, body: Callable[[], Awaitable[None]], on_crash: Callable[[], None]
    ) -> asyncio.Task:
        """Run `body` as task `name` until it returns; `on_crash` runs after each unexpected exception."""
        return asyncio.create_task(self._supervise(name, body, on_crash), name=f"kdoct-record-{name}")

    async def _supervise(
        self, name: str, body: Callable[[], Awaitable[None]], on_crash: Callable[[], None]
    ) -> None:
        backoff = self.first_backoff_s
        while True:
            began = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.down.add(name)
                log.exception("record writer task %r failed; restarting it", name)
                for settle in (on_crash, lambda: self.on_restart(name)):
                    try:
                        settle()
                    except Exception:
                        log.exception("record writer task %r: settling after its failure failed", name)
            if time.monotonic() - began > _HEALTHY_RUN_S:
                backoff = self.first_backoff_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            self.down.discard(name)
