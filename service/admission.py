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
"""

from __future__ import annotations

__all__ = ["Admission"]


class Admission:
    """At most `limit` classifying requests in flight in this process (reading, decoding, queued,
    running, being recorded)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
