"""Support for the records tests: what a database holds, and waiting for the durable writers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy import Engine, func, select

from service.db.models import Prediction

__all__ = ["UNREACHABLE_PG", "count_rows", "stored_rows", "until"]

# Nothing listens on port 1: connections are refused at once.
UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def stored_rows(engine: Engine) -> dict[str, str]:
    """prediction id -> input sha256 of every stored row."""
    with engine.connect() as conn:
        return {str(i): s for i, s in conn.execute(select(Prediction.id, Prediction.input_sha256))}


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Prediction))


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `condition` until it holds; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
