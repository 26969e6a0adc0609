"""Which ONNX Runtime session runs the next batch: the one whose intra-op threads spin, or the one
whose threads park.

Spinning threads pick up each operator's work at once, so a forward runs ~25 % faster on an idle
2-core machine (docs/BENCHMARKS.md); but when anything else wants those cores (other processes, or
the service's own decode threads) the spinning threads and the preempted one stall every parallel
operator and the same forward takes twice as long. Neither setting wins everywhere, and the load
changes while the service runs, so the runtime measures both: it serves with the faster one and
every `explore_every` calls runs the other once, to notice when the machine's load has changed.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["FastestVariant"]


class FastestVariant:
    """Picks among named variants by the median of each one's recent seconds per row.

    Not thread-safe: the runtime is called from one thread at a time (the batcher's).
    """

    def __init__(self, names: tuple[str, ...], *, window: int = 5, explore_every: int = 25) -> None:
        if len(names) < 1 or explore_every < 2:
            raise ValueError("need at least one variant and explore_every >= 2")
        self.names = names
        self.explore_every = explore_every
        self._recent = {name: deque(maxlen=window) for name in names}
        self._calls = 0
        self._explored = 0
        self.current = names[0]

    def pick(self) -> str:
        """The variant for the next call: every variant until each has a sample, then the fastest,
        and every `explore_every`-th call one of the others in turn."""
        self._calls += 1
        for name in self.names:
            if not self._recent[name]:
                return name
        if len(self.names) > 1 and self._calls % self.explore_every == 0:
            others = [name for name in self.names if name != self.current]
            self._explored += 1
            return others[self._explored % len(others)]
        return self.current

    def observe(self, name: str, seconds_per_row: float) -> None:
        self._recent[name].append(seconds_per_row)
        measured = {key: statistics.median(values) for key, values in self._recent.items() if values}
        self.current = min(measured, key=measured.get)

    def estimates(self) -> dict[str, float | None]:
        """Median recent seconds per row of each variant (None before its first call)."""
        return {key: statistics.median(values) if values else None for key, values in self._recent.items()}
