"""Admission of classifying requests before their body is read.

Under overload the micro-batcher's bounded queue (service/inference/batcher.py) refuses with 503, but
only after the request was read, decoded and preprocessed: every refusal cost a full decode, so the
more clients resent at once, the less CPU was left for the requests that were answered. Admission
refuses first: the ingress gate (service/ingress/gate.py) takes a slot for the doors that decode and
infer, after the key and scope checks and before a byte of the body is read; the slot comes back when
the request has been answered. A refusal then costs only the HTTP head and the key check.

The limit is per process: `max_queue + max_batch_size + decode threads` (what may wait, what may run,
and what the decode threads prepare meanwhile: without them the queue runs dry between batches, which
was measured to halve goodput at twice the admitted load). The batcher's queue is sized to hold every
admitted request (service/app.py), so an admitted request is never refused after its decode.
The batcher keeps its own bound as a second line (the teacher's queue, explanations). One event loop
per process: the counter needs no lock.

A request that finds every slot taken may wait up to `wait_s` (KDOCT_ADMISSION_WAIT_S, 0.5 s) in a
waiting room of 4 x limit, body unread, first come first served: a slot given back goes straight to the
first waiter, so a slot never stands idle while requests wait, and clients that resend at once are
refused about 43 times a second instead of ~127. Measured on one core shared with the clients (a slow
host, docs/BENCHMARKS.md "versions side by side"): 32 clients resending at once got 0.91 x one client's
goodput with refusals at once (paced 0.2 s), 0.95 x with 0.5 s of waiting and 0.97 x with 1 s (0.87,
0.98 and 1.02 in an earlier run); the price is latency, answered p50 about 400 -> 850 -> 1,350 ms.
0 restores refusing at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Admission"]

WAITING_ROOM_PER_SLOT = 4


class Admission:
    """At most `limit` classifying requests in flight in this process (reading, decoding, queued,
    running, being recorded), and at most WAITING_ROOM_PER_SLOT x limit waiting up to `wait_s` for one."""

    def __init__(self, limit: int, *, wait_s: float = 0.0) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.limit = limit
        self.wait_s = wait_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        """A slot now, or False; never ahead of a request already waiting."""
        if self.in_flight >= self.limit or self._waiters:
            return False
        self.in_flight += 1
        return True

    async def enter(self) -> bool:
        """A slot now or within `wait_s` (True), or False: every slot stayed taken, or the waiting room
        is full."""
        if self.try_enter():
            return True
        if self.wait_s <= 0 or len(self._waiters) >= WAITING_ROOM_PER_SLOT * self.limit:
            return False
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        try:
            async with asyncio.timeout(self.wait_s):
                await asyncio.shield(handed)
            return True
        except TimeoutError:
            self._withdraw(handed)
            return False
        except BaseException:  # the request was cancelled while it waited
            self._withdraw(handed)
            raise

    def _withdraw(self, handed: asyncio.Future[None]) -> None:
        if handed in self._waiters:
            self._waiters.remove(handed)
        if handed.done() and not handed.cancelled():
            self.leave()  # handed over just as the wait ended: pass the slot on
        else:
            handed.cancel()

    def leave(self) -> None:
        """Give a slot back: to the first request waiting, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: in_flight is unchanged
                return
        self.in_flight -= 1
