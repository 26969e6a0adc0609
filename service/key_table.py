"""The API keys a worker knows, held in memory and refreshed from the database (service/security.py
checks requests against it).

Why a table and not a lookup per key: a lookup per unknown key let 2,000 requests with distinct bad
keys cost 3,912 database transactions (issue 23, case 11). Here every load is one SELECT of the whole
(small) api_clients table, so:
- a known key (valid or revoked) is answered from memory, with no database work at all;
- the table is reloaded every `refresh_s` seconds in the background: a revocation or rotation takes
  effect within `refresh_s` plus one load;
- an unknown key waits for a load that *started after it arrived*, so a key created before the request
  was sent always works, at once; loads start at most once per `miss_interval_s`, and every miss
  waiting meanwhile shares the same load. However many distinct bad keys arrive, they cost at most
  one SELECT per `miss_interval_s`, and each waits at most that long (a small tarpit for guessers);
- a hash that a load found absent is remembered (`_absent`, bounded) and answered at once next time:
  a key is random and made before it can be sent, so an absent hash never becomes a key. The set is
  cleared whenever a load brings a key the previous one did not have (a restored database).

While the database is unreachable the last loaded table keeps answering; a worker that never loaded
one cannot tell any key (NotLoaded). Loads are serialised; the table is replaced whole, never
mutated, so readers on the event loop never see half a table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["KeyTable", "NotLoaded"]

log = logging.getLogger(__name__)

V = TypeVar("V")
_ABSENT_MAX_ENTRIES = 10_000  # 64-character hashes: ~1.6 MiB at most


class NotLoaded(Exception):
    """No load has succeeded yet (the database has been unreachable since this worker started)."""


class KeyTable(Generic[V]):
    """Key hash -> V, loaded whole by ``load`` (run in a thread: it queries the database)."""

    def __init__(
        self,
        load: Callable[[], Mapping[str, V]],
        *,
        refresh_s: float,
        miss_interval_s: float = 0.5,
        miss_wait_s: float = 2.0,
    ) -> None:
        self._load = load
        self.refresh_s = refresh_s
        self.miss_interval_s = miss_interval_s
        self.miss_wait_s = miss_wait_s
        self._entries: Mapping[str, V] = {}
        self._absent: set[str] = set()
        self.loaded = False
        self.loads = 0  # successful loads, for tests and logs
        self._last_start = float("-inf")
        self._lock: asyncio.Lock | None = None  # made on the loop that uses it
        self._next: asyncio.Task[bool] | None = None  # the load that has not started yet
        self._refresher: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        """Load once (a failure is logged: the service starts during an outage) and keep refreshing."""
        await self._load_after_now()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._keep_fresh(), name="kdoct-key-table")

    async def stop(self) -> None:
        tasks = [task for task in (self._refresher, self._next) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = self._next = None

    def get(self, key_hash: str) -> V | None:
        """From memory only."""
        return self._entries.get(key_hash)

    async def find(self, key_hash: str) -> V | None:
        """The entry for ``key_hash``, None when unknown. NotLoaded when no table was ever loaded."""
        found = self._entries.get(key_hash)
        if found is not None:
            return found
        if key_hash in self._absent:
            return None
        refreshed = await self._load_after_now()
        found = self._entries.get(key_hash)
        if found is None:
            if not self.loaded:
                raise NotLoaded
            if refreshed:
                if len(self._absent) >= _ABSENT_MAX_ENTRIES:
                    self._absent.clear()  # bounded; a cleared hash only waits for a load again
                self._absent.add(key_hash)
        return found

    async def _load_after_now(self) -> bool:
        """Wait (at most miss_wait_s) for a load that starts after this call; whether it succeeded.
        Every caller arriving before that load starts shares it."""
        task = self._next
        if task is None:
            task = self._next = asyncio.create_task(self._scheduled_load())
        # asyncio.wait, not wait_for: it leaves the shared load running on a timeout, and never
        # swallows the caller's own cancellation (wait_for can, in Python 3.11, when both coincide).
        done, _ = await asyncio.wait({task}, timeout=self.miss_wait_s)
        return bool(done) and not task.cancelled() and task.result()

    async def _scheduled_load(self) -> bool:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            delay = self._last_start + self.miss_interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # From here on, a caller arriving now could miss a key this load does not see yet: it
            # waits for the next load. Both lines run before the load starts, with no await between.
            self._next = None
            self._last_start = time.monotonic()
            try:
                entries = await asyncio.to_thread(self._load)
            except Exception as exc:  # any failure (database, network) keeps the last table
                if not self._failing:
                    cause = getattr(exc, "orig", None) or exc
                    log.warning(
                        "API keys could not be reloaded (%s); the table loaded before keeps answering",
                        type(cause).__name__,
                    )
                self._failing = True
                return False
            if self._failing:
                log.info("API keys reloaded: %d keys", len(entries))
            self._failing = False
            if not entries.keys() <= self._entries.keys():
                self._absent.clear()  # a key that was not there before: forget what was found absent
            self._entries = entries
            self.loaded = True
            self.loads += 1
            return True

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self._load_after_now()
