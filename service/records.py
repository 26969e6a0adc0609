"""Prediction records and the sink they go to before a prediction is answered.

The classify route builds one `PredictionRecord` per answered result (per frame, plus the volume
result, for DICOM volumes) and awaits `PredictionSink.record` before it answers: a sink that cannot
take the records raises `RecordUnavailable` and the client gets 503, never an answer without a
record. `MemorySink` keeps the latest records in memory; the durable database sink (records issue)
implements the same protocol.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

__all__ = ["MemorySink", "PredictionRecord", "PredictionSink", "RecordUnavailable", "new_prediction_id"]


def new_prediction_id() -> uuid.UUID:
    return uuid.uuid4()


class RecordUnavailable(Exception):
    """The sink cannot store the records now; the request must fail (503) instead of answering."""


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """What is kept of one prediction: never the image, never a patient identifier."""

    id: uuid.UUID
    request_id: str
    model_name: str
    model_version: str
    model_sha256: str
    input_sha256: str
    format: str
    width: int
    height: int
    probabilities: dict[str, float]
    label: str
    confidence: float
    refer: bool
    timing_ms: dict[str, float]
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    client_id: str | None = None
    teacher_model_name: str | None = None
    teacher_model_version: str | None = None
    teacher_model_sha256: str | None = None
    # DICOM only: the frame of a volume (None for the volume-level result and for plain images), and a
    # hash of the uploaded volume (never a DICOM UID).
    frame_index: int | None = None
    volume_id: str | None = None
    second_opinion: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = str(self.id)
        data["created_at"] = self.created_at.isoformat()
        return data


@runtime_checkable
class PredictionSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Flush and close; called once at shutdown after the batchers have drained."""

    async def record(self, records: list[PredictionRecord]) -> None:
        """Store `records` durably (or in the sink's sense of it) or raise RecordUnavailable."""

    async def ready(self) -> bool:
        """Whether the sink can take records now (for /health/ready)."""


class MemorySink:
    """Keeps the last `capacity` records in memory: for tests and local demos, not an audit log."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._records: OrderedDict[uuid.UUID, PredictionRecord] = OrderedDict()
        self.accepting = True

    async def start(self) -> None:
        self.accepting = True

    async def stop(self) -> None:
        self.accepting = False

    async def record(self, records: list[PredictionRecord]) -> None:
        if not self.accepting:
            raise RecordUnavailable("the prediction record sink is stopped")
        for record in records:
            self._records[record.id] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    async def ready(self) -> bool:
        return self.accepting

    def get(self, prediction_id: uuid.UUID | str) -> PredictionRecord | None:
        key = prediction_id if isinstance(prediction_id, uuid.UUID) else uuid.UUID(str(prediction_id))
        return self._records.get(key)

    def all(self) -> list[PredictionRecord]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)
