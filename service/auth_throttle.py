"""Failed authentications counted per client address: beyond ``limit`` in a window of ``window_s``
seconds (from the first failure), the address is held off until the window ends: every request of
it that needs a key is answered 429 with Retry-After, before any key is looked at.

Held off means with a good key too: answering a good key while refusing bad ones would tell a guesser
which guess was right, and the limit would slow nothing. The price: clients that share an address
(behind a NAT, or a proxy the service does not trust for X-Forwarded-For) share the budget, so one
misconfigured client holds the others off for the window (docs/SECURITY.md).

IPv6 addresses count per /64, the block one host usually has. Memory is bounded: at most
``max_addresses`` windows are kept; expired ones go first, then the oldest.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict

__all__ = ["FailureThrottle"]


def _bucket(address: str) -> str:
    if ":" not in address:
        return address  # IPv4, or a name (a test client): as it is
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class FailureThrottle:
    def __init__(self, limit: int, window_s: float, *, max_addresses: int = 65_536) -> None:
        self.limit = limit  # 0: off
        self.window_s = window_s
        self.max_addresses = max_addresses
        # bucket -> [window start (monotonic), failures]; in order of window start
        self._windows: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, address: str | None, now: float | None = None) -> int | None:
        """Whole seconds until ``address`` may try again; None when it is not held off."""
        if not self.limit or address is None:
            return None
        window = self._windows.get(_bucket(address))
        if window is None or window[1] < self.limit:
            return None
        left = window[0] + self.window_s - (time.monotonic() if now is None else now)
        return max(1, math.ceil(left)) if left > 0 else None

    def failed(self, address: str | None, now: float | None = None) -> None:
        if not self.limit or address is None:
            return
        now = time.monotonic() if now is None else now
        bucket = _bucket(address)
        window = self._windows.get(bucket)
        if window is not None and now - window[0] < self.window_s:
            window[1] += 1
            return
        self._windows.pop(bucket, None)
        self._forget_expired(now)
        if len(self._windows) >= self.max_addresses:
            self._windows.popitem(last=False)
        self._windows[bucket] = [now, 1]

    def _forget_expired(self, now: float) -> None:
        while self._windows:
            start, _ = next(iter(self._windows.values()))
            if now - start < self.window_s:
                return
            self._windows.popitem(last=False)

    def __len__(self) -> int:
        return len(self._windows)
