"""Reading a request body within its budgets: size, time and memory.

- Size: the door's cap, checked against Content-Length before reading and against what arrives.
- Time: each read must arrive within `read_timeout_s`, and the body as a whole at `min_rate` bytes a
  second after that grace (at t seconds, at least min_rate x (t - read_timeout_s) bytes must have
  come): a sender of one byte every 20 s is cut off after the grace, not held for hours.
- Memory: bodies still arriving are held in memory only while the process's in-memory share allows
  (a quarter of the memory budget, shared by all requests); past it, a body goes to an unnamed
  temporary file (O_TMPFILE: 0600 and gone when closed). A complete body is charged to the request's
  Ticket in full before the app sees it (the app will hold it), so a body that cannot be afforded now
  is refused with 503 rather than read into memory.

The app then reads the body as usual, replayed chunk by chunk; a chunk handed over is dropped here.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from starlette.types import Message

from service import prometheus
from service.ingress.budget import Ticket
from service.problems import Problem

__all__ = ["Body", "BodyLimits", "MemoryShare", "declared_length", "read_body"]

_REPLAY_CHUNK = 1 << 20
# Byte counts are plain ASCII digits: `str.isdigit` also accepts '²' and other digits int() refuses.
_BYTE_COUNT = re.compile(r"[0-9]{1,18}")


def declared_length(value: str | None, header: str) -> int | None:
    """A byte-count header's value; None when absent; 400 when it is not plain digits."""
    if value is None:
        return None
    value = value.strip()
    if not _BYTE_COUNT.fullmatch(value):
        raise Problem("bad-request", f"invalid {header} header: send a byte count", reason="bad_request")
    return int(value)


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    what: str  # names the limit in a 413: "(KDOCT_MAX_UPLOAD_BYTES)", "for this route"...
    read_timeout_s: float
    min_rate: float  # bytes per second, after the grace of read_timeout_s


class MemoryShare:
    """Bytes of bodies still arriving that this process holds in memory (event loop only)."""

    def __init__(self, capacity: int, spill_dir: Path | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self.spill_dir = spill_dir


class Body:
    """A complete request body, in memory chunks or a temporary file."""

    def __init__(self) -> None:
        self.size = 0
        self._chunks: list[bytes] = []
        self._file: IO[bytes] | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def _append(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._chunks.append(chunk)
        self.size += len(chunk)

    def _spill(self, spill_dir: Path | None) -> None:
        self._file = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115 - closed by close(), after the replay
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks.clear()
        prometheus.INGRESS_SPILLED_BODIES.inc()

    def replay(self, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
        """A receive that hands the body over in chunks, then defers to the connection's receive."""
        if self._file is not None:
            self._file.seek(0)
        remaining = self.size
        done = False

        async def replayed() -> Message:
            nonlocal remaining, done
            if done:
                return await receive()
            if self._file is not None:
                chunk = self._file.read(min(_REPLAY_CHUNK, remaining))
            else:
                chunk = self._chunks.pop(0) if self._chunks else b""
            remaining -= len(chunk)
            done = remaining <= 0
            if done:
                self.close()
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replayed

    def close(self) -> None:
        self._chunks.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


async def read_body(
    receive: Callable[[], Awaitable[Message]],
    *,
    declared: int | None,
    limits: BodyLimits,
    share: MemoryShare,
    ticket: Ticket | None,
) -> Body | None:
    """The whole body within `limits`, charged to `ticket`; None when the client went away. Raises
    Problem: 413 too large, 408 too slow, 503 when its memory cannot be afforded now."""
    if declared is not None and declared > limits.max_bytes:
        raise _too_large(limits)
    if declared is not None and ticket is not None:
        ticket.check_affordable(declared, "the request body")  # before the client spends time sending it
    body, in_memory = Body(), 0
    started = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            # The rate rule: the next byte is due by the time the bytes so far have "paid" for.
            due = started + limits.read_timeout_s + body.size / limits.min_rate
            wait = min(limits.read_timeout_s, due - now)
            if wait <= 0:
                raise _too_slow(limits, body.size, now - started)
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise _too_slow(limits, body.size, time.monotonic() - started) from None
            if message["type"] == "http.disconnect":
                body.close()
                return None
            chunk = message.get("body", b"")
            if body.size + len(chunk) > limits.max_bytes:
                raise _too_large(limits)
            if not body.spilled and share.used + len(chunk) > share.capacity:
                share.used -= in_memory
                in_memory = 0
                body._spill(share.spill_dir)
            if not body.spilled:
                share.used += len(chunk)
                in_memory += len(chunk)
            body._append(chunk)
            if not message.get("more_body", False):
                break
    except BaseException:
        body.close()
        raise
    finally:
        share.used -= in_memory
    if ticket is not None:
        try:
            ticket.charge_bytes(body.size, "the request body")
        except Problem:
            body.close()
            raise
    return body


def _too_large(limits: BodyLimits) -> Problem:
    return Problem(
        "payload-too-large",
        f"the request body exceeds {limits.max_bytes} bytes {limits.what}",
        reason="too_large",
    )


def _too_slow(limits: BodyLimits, received: int, elapsed: float) -> Problem:
    return Problem(
        "request-timeout",
        f"the request body arrived too slowly: {received} bytes in {elapsed:.0f} s (each read within "
        f"{limits.read_timeout_s:g} s, and at least {limits.min_rate:g} bytes/s after that; "
        f"KDOCT_BODY_READ_TIMEOUT_S, KDOCT_MIN_BODY_BYTES_PER_S)",
        reason="body_too_slow",
    )
