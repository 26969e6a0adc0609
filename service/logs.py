"""Where the service's log lines go: stderr, one format, the configured level."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str) -> None:
    """The service's log lines (the chain checkpoints among them) on stderr at ``level``. Runs in the
    serving process and again in each uvicorn worker, which starts without a handler of its own; a
    no-op where logging is already configured (tests, an embedding application)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
