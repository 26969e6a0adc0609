"""IngressGate: the checks a request passes before its body is read, whatever its transport.

Order: the key's scope for the door (403, counted as an auth failure by the caller's authenticator),
then the key's in-flight cap (429: one key cannot hold every slot), then for admitted doors an
admission slot, waited for up to KDOCT_ADMISSION_WAIT_S (503 + Retry-After, service/admission.py).
Passing gives a Ticket (budget.py); every count taken here is given back when the ticket is closed.

A refusal that did not wait is held OVERLOAD_PACING_S before it is raised (no slot, no CPU: the event
loop serves others meanwhile). Without it, clients that resend at once were refused ~600 times a second
and that HTTP work took the CPU from the admitted requests (docs/BENCHMARKS.md, goodput under overload).
"""

from __future__ import annotations

import asyncio
import time

from service import prometheus
from service.admission import Admission
from service.ingress.budget import MemoryBudget, RequestLimits, Ticket
from service.ingress.doors import Door
from service.problems import Problem
from service.security import Client

__all__ = ["OVERLOAD_PACING_S", "IngressGate"]

OVERLOAD_PACING_S = 0.2


class IngressGate:
    def __init__(
        self,
        admission: Admission,
        budget: MemoryBudget,
        limits: RequestLimits,
        *,
        max_in_flight_per_key: int | None = None,
    ) -> None:
        self.admission = admission
        self.budget = budget
        self.limits = limits
        # None: half the admission limit (resolved when the limit is, service/app.py).
        self.max_in_flight_per_key = max_in_flight_per_key
        self.input_bytes_per_frame = 0  # set once the models are loaded
        self._in_flight: dict[str, int] = {}

    def per_key_limit(self) -> int:
        if self.max_in_flight_per_key is not None:
            return self.max_in_flight_per_key
        return max(1, self.admission.limit // 2)

    async def enter(self, door: Door, client: Client) -> Ticket:
        """A ticket for `client` through `door`, or a Problem saying why not. Called on the event loop
        (the counters need no lock); the scope is checked by the caller's authenticator first. An
        admitted door may wait up to KDOCT_ADMISSION_WAIT_S for a slot (service/admission.py)."""
        if not client.allows(door.scope):
            raise Problem("forbidden", f"this API key lacks the '{door.scope}' scope")
        key = client.id
        if key is not None:
            held = self._in_flight.get(key, 0)
            limit = self.per_key_limit()
            if held >= limit:
                await asyncio.sleep(OVERLOAD_PACING_S)
                raise Problem(
                    "too-many-requests",
                    f"this API key has {held} requests in flight, its limit (KDOCT_MAX_IN_FLIGHT_PER_KEY); "
                    f"wait for an answer before sending more",
                    reason="key_in_flight",
                    headers={"Retry-After": "1"},
                )
        if key is not None:  # counted while it waits for a slot too
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            began = time.monotonic()
            if door.admitted and not await self.admission.enter():
                # Refused without (much of) a wait: the waiting room was full, or waiting is off.
                await asyncio.sleep(max(0.0, began + OVERLOAD_PACING_S - time.monotonic()))
                raise Problem(
                    "overloaded",
                    f"the service is full: {self.admission.limit} classification requests in flight in "
                    f"this worker (KDOCT_MAX_QUEUE + batch size + decode threads) and "
                    f"{self.admission.waiting} waiting; retry after 1 s",
                    reason="queue_full",
                    headers={"Retry-After": "1"},
                )
        except BaseException:
            if key is not None:
                self._leave(key)
            raise
        ticket = Ticket(
            door.name, key, self.budget, self.limits, input_bytes_per_frame=self.input_bytes_per_frame
        )
        if door.admitted:
            ticket.on_close(self.admission.leave)
        if key is not None:
            ticket.on_close(lambda: self._leave(key))
        prometheus.INGRESS_IN_FLIGHT.labels(door=door.name).inc()
        ticket.on_close(prometheus.INGRESS_IN_FLIGHT.labels(door=door.name).dec)
        return ticket

    def _leave(self, key: str) -> None:
        remaining = self._in_flight[key] - 1
        if remaining:
            self._in_flight[key] = remaining
        else:
            del self._in_flight[key]
