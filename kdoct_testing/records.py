"""Support for the records tests: what a database holds, waiting for the durable writers, and
MemorySink, the PredictionSink that keeps rows in memory (the in-process app tests)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from service.db.tables import Prediction
from service.records import RecordUnavailable

__all__ = ["MemorySink", "UNREACHABLE_PG", "count_rows", "make_record", "spool_line", "stored_rows", "until"]

# Nothing listens on port 1: connections are refused at once.
UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def make_record(**overrides) -> dict[str, Any]:
    """The values of one predictions row, as service.records.prediction_rows derives them."""
    payload = os.urandom(32)
    values = dict(
        id=uuid.uuid4(),
        request_id=uuid.uuid4().hex,
        model_name="kdoct-student",
        model_version="0.1.0",
        model_sha256="a" * 64,
        input_sha256=hashlib.sha256(payload).hexdigest(),
        format="jpeg",
        width=512,
        height=496,
        probabilities={"normal": 0.7, "drusen": 0.2, "cnv": 0.1},
        label="normal",
        confidence=0.7,
        refer=False,
        timing_ms={"decode": 1.25, "queue": 0.1, "inference": 8.0, "total": 9.5},
        created_at=datetime.now(UTC),
        client_id=None,
        teacher_model_name=None,
        teacher_model_version=None,
        teacher_model_sha256=None,
        frame_index=None,
        volume_id=None,
        second_opinion=None,
    )
    values.update(overrides)
    return values


def spool_line(record: dict[str, Any]) -> bytes:
    """The spool's line for one record, as a writer appends it (newline included)."""
    from service.db.rows import normalise_row, row_to_json

    return row_to_json(normalise_row(record)).encode() + b"\n"


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


class MemorySink:
    """Keeps the last `capacity` rows in memory: a PredictionSink for tests, not an audit log."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._rows: OrderedDict[uuid.UUID, dict[str, Any]] = OrderedDict()
        self.accepting = True

    async def start(self) -> None:
        self.accepting = True

    async def stop(self) -> None:
        self.accepting = False

    async def record(self, rows: list[dict[str, Any]]) -> None:
        if not self.accepting:
            raise RecordUnavailable("the prediction record sink is stopped")
        for row in rows:
            self._rows[row["id"]] = row
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    async def ready(self) -> bool:
        return self.accepting

    async def flush(self, timeout_s: float) -> bool:
        return True

    def get(self, prediction_id: uuid.UUID | str) -> dict[str, Any] | None:
        key = prediction_id if isinstance(prediction_id, uuid.UUID) else uuid.UUID(str(prediction_id))
        return self._rows.get(key)

    def all(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)
