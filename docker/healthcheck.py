"""Docker HEALTHCHECK: exit 0 when the URL answers 2xx within the timeout, 1 otherwise.

Python's standard library instead of curl keeps the runtime image free of extra packages.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def healthy(url: str, timeout_s: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: healthcheck.py URL")
    sys.exit(0 if healthy(sys.argv[1]) else 1)
