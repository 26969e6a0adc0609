"""What a request may cost, and the process's memory budget it is charged to.

MemoryBudget is shared by every request of the process (thread-safe: charges come from the event loop
and from decode threads). A Ticket holds one request's charges and its running totals; closing it gives
them all back. The estimates are deliberately pessimistic (measured in docs/BENCHMARKS.md, "ingress"):

- a decoded frame is kept at up to 4 bytes a pixel (RGBA, or float32 for 12/16-bit data), and one frame
  at a time takes up to 8 bytes a pixel more while it is converted;
- each frame becomes a float32 input of the model's size (and the teacher's, when there is one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service import prometheus
from service.imaging import ImageShape
from service.problems import Problem

__all__ = ["ImageShape", "MemoryBudget", "RequestLimits", "Ticket", "image_cost"]

KEPT_BYTES_PER_PIXEL = 4
CONVERSION_BYTES_PER_PIXEL = 8
MiB = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    """Per request, across all its elements (a /v2 request carries up to max_frames images)."""

    max_frames: int
    max_pixels: int


def image_cost(shapes: Sequence[ImageShape], input_bytes_per_frame: int) -> int:
    """The bytes decoding and preprocessing `shapes` may hold at once (the module's estimates)."""
    if not shapes:
        return 0
    kept = sum(shape.pixels for shape in shapes) * KEPT_BYTES_PER_PIXEL
    converting = max(shape.width * shape.height for shape in shapes) * CONVERSION_BYTES_PER_PIXEL
    return kept + converting + sum(shape.frames for shape in shapes) * input_bytes_per_frame


def _mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


class MemoryBudget:
    """Bytes that requests in flight in this process may hold in bodies, decoded images and inputs."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the memory budget must be at least 1 byte")
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def try_take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.capacity:
                return False
            self.used += size
            prometheus.INGRESS_MEMORY.set(self.used)
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size
            prometheus.INGRESS_MEMORY.set(self.used)


class Ticket:
    """One request's way through the gate: its door, its key, and everything charged to it.

    `close` is idempotent and is called once the request has been answered (or refused); `on_close`
    callbacks give back what the gate counted (the admission slot, the key's in-flight count)."""

    def __init__(
        self,
        door: str,
        client_id: str | None,
        budget: MemoryBudget,
        limits: RequestLimits,
        *,
        input_bytes_per_frame: int = 0,
    ) -> None:
        self.door = door
        self.client_id = client_id
        self.budget = budget
        self.limits = limits
        self.input_bytes_per_frame = input_bytes_per_frame
        self.charged = 0
        self.frames = 0
        self.pixels = 0
        self._on_close: list[Callable[[], None]] = []
        # Reentrant: charge_images checks and charges under one hold (decode threads may charge at once).
        self._lock = threading.RLock()
        self._closed = False

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def charge_bytes(self, size: int, what: str) -> None:
        """Hold `size` bytes for `what` until the request ends; 413 when more than the whole budget,
        503 when the budget is spent by requests in flight."""
        if size <= 0:
            return
        with self._lock:
            self._charge(size, what)

    def check_affordable(self, size: int, what: str) -> None:
        """Raise what charge_bytes would now, without charging: a body whose Content-Length cannot be
        afforded is refused before the client sends it."""
        with self._lock:
            self._refuse_over_capacity(size, what)
            if self.budget.used + size > self.budget.capacity:
                raise self._budget_taken(size, what)

    def _refuse_over_capacity(self, size: int, what: str) -> None:
        if self.charged + size > self.budget.capacity:
            raise Problem(
                "payload-too-large",
                f"this request needs about {_mib(self.charged + size)} of memory ({what}), over the "
                f"budget of {_mib(self.budget.capacity)} (KDOCT_MEMORY_BUDGET_BYTES): send fewer or "
                f"smaller images per request",
                reason="too_large",
            )

    def _budget_taken(self, size: int, what: str) -> Problem:
        return Problem(
            "overloaded",
            f"the service's memory budget ({_mib(self.budget.capacity)}) is taken by the requests in "
            f"flight; this one needs {_mib(size)} more ({what}); retry after 1 s",
            reason="memory_budget",
            headers={"Retry-After": "1"},
        )

    def _charge(self, size: int, what: str) -> None:
        if self._closed:
            raise RuntimeError("a closed ticket cannot be charged")
        self._refuse_over_capacity(size, what)
        if not self.budget.try_take(size):
            raise self._budget_taken(size, what)
        self.charged += size

    def refund(self, size: int) -> None:
        """Give back part of what was charged (a transient that is gone, such as a parsed JSON tree)."""
        with self._lock:
            size = min(size, self.charged)
            if self._closed or size <= 0:
                return
            self.charged -= size
        self.budget.give_back(size)

    def charge_images(self, shapes: Sequence[ImageShape]) -> None:
        """Count `shapes` (every element of the request, before any is decoded) against the
        per-request limits, then charge their decoded size."""
        with self._lock:
            self._charge_images(shapes)

    def _charge_images(self, shapes: Sequence[ImageShape]) -> None:
        frames = self.frames + sum(shape.frames for shape in shapes)
        pixels = self.pixels + sum(shape.pixels for shape in shapes)
        if frames > self.limits.max_frames:
            raise Problem(
                "decompression-bomb",
                f"the request holds {frames} frames in all, over the limit of {self.limits.max_frames} "
                f"per request (KDOCT_MAX_FRAMES)",
                reason="decompression_bomb",
            )
        if pixels > self.limits.max_pixels:
            raise Problem(
                "decompression-bomb",
                f"the request's images hold {pixels} pixels in all, over the limit of "
                f"{self.limits.max_pixels} per request (KDOCT_MAX_VOLUME_PIXELS)",
                reason="decompression_bomb",
            )
        self._charge(image_cost(shapes, self.input_bytes_per_frame), f"{frames} decoded frame(s)")
        self.frames, self.pixels = frames, pixels

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            charged, self.charged = self.charged, 0
        self.budget.give_back(charged)
        for callback in self._on_close:
            callback()
