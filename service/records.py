"""Prediction records: the one mapping from an answer to the rows kept of it, the sink they go to
before the answer goes out, and the Recorder that puts answers there.

`prediction_rows` derives the rows from the answer itself (service/answer.py ClassifyResponse):
one per image, or one per frame of a DICOM plus one for the volume result, each with the values of
a `predictions` row (service/db/tables.py) except the chain's own columns. Never the image, never a
patient identifier, never a heatmap, and the request id only as its keyed hash.

Every classifying route awaits `Recorder.record(answers)` before it answers: the rows go to the
`PredictionSink`, and a sink that cannot take them (`RecordUnavailable`, or any failure) is a 503,
never an answer without a record; then the answers are counted in the metrics. The Recorder also
owns the request id's keyed hash (the audit key's, service/audit_key.py), for the rows and for the
query API's filter and read log. service/db/writer.py and service/db/spool_first.py are the durable
sinks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from service import prometheus
from service.answer import ClassifyResponse, SecondOpinion
from service.audit_key import AuditKey
from service.inference.second_opinion import outcome
from service.monitoring import drift
from service.problems import Problem

__all__ = [
    "PredictionSink",
    "RecordUnavailable",
    "Recorder",
    "count_answer",
    "new_prediction_id",
    "prediction_rows",
]

log = logging.getLogger(__name__)

# A read or feedback first waits this long for what this worker has answered to be in the database.
READ_YOUR_ANSWER_S = 2.0


def new_prediction_id() -> uuid.UUID:
    return uuid.uuid4()


class RecordUnavailable(Exception):
    """The sink cannot store the records now; the request must fail (503) instead of answering."""


def _opinion(opinion: SecondOpinion | None) -> dict[str, Any] | None:
    # The teacher's result as answered, without its heatmap: records never hold images.
    return None if opinion is None else opinion.model_dump(exclude={"explanation"}, exclude_none=True)


def prediction_rows(
    answer: ClassifyResponse,
    *,
    request_id_hash: str,
    client_id: str | None,
    created_at: datetime | None = None,
) -> list[dict[str, Any]]:
    """The rows that put ``answer`` on record: its frames (DICOM), then its own result unless it is
    one of them (a volume's result is; a single frame's is not)."""
    frames = answer.frames or []
    opinions = [frame.second_opinion for frame in frames] + [answer.second_opinion]
    teacher = next((opinion.model for opinion in opinions if opinion is not None), None)
    common = {
        "request_id": request_id_hash,
        "created_at": created_at or datetime.now(UTC),
        "client_id": client_id,
        "model_name": answer.model.name,
        "model_version": answer.model.version,
        "model_sha256": answer.model.sha256,
        "teacher_model_name": teacher and teacher.name,
        "teacher_model_version": teacher and teacher.version,
        "teacher_model_sha256": teacher and teacher.sha256,
        "input_sha256": answer.input.sha256,
        "format": answer.input.format,
        "width": answer.input.width,
        "height": answer.input.height,
        "volume_id": answer.volume_id,
        "timing_ms": answer.timing_ms.model_dump(),
    }
    rows = [
        {
            **common,
            "id": uuid.UUID(frame.prediction_id),
            "frame_index": frame.frame_index,
            "probabilities": dict(frame.probabilities),
            "label": frame.label,
            "confidence": frame.confidence,
            "refer": frame.refer,
            "second_opinion": _opinion(frame.second_opinion),
            "gradable": frame.gradable,
            "gate_reason": frame.reason,
            "ood_score": frame.ood_score,
        }
        for frame in frames
    ]
    if answer.prediction_id not in {frame.prediction_id for frame in frames}:
        rows.append(
            {
                **common,
                "id": uuid.UUID(answer.prediction_id),
                "frame_index": None,
                "probabilities": dict(answer.probabilities),
                "label": answer.label,
                "confidence": answer.confidence,
                "refer": answer.refer,
                "second_opinion": _opinion(answer.second_opinion),
                "gradable": answer.gradable,
                "gate_reason": answer.reason,
                "ood_score": answer.ood_score,
            }
        )
    return rows


@runtime_checkable
class PredictionSink(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Flush and close; called once at shutdown after the batchers have drained."""

    async def record(self, rows: list[dict[str, Any]]) -> None:
        """Store `rows` (prediction_rows) durably, or in the sink's sense of it, or raise
        RecordUnavailable."""

    async def ready(self) -> bool:
        """Whether the sink can take records now (for /health/ready)."""

    async def flush(self, timeout_s: float) -> bool:
        """Wait (at most timeout_s) until the records answered so far can be read back from the
        database; False if they could not be in time. Immediate for a sink that commits first."""


class Recorder:
    """Puts answers on record before they go out, and counts them; hashes request ids as the records
    keep them."""

    def __init__(self, sink: PredictionSink, audit_key: AuditKey) -> None:
        self.sink = sink
        self.audit_key = audit_key

    def request_id_hash(self, request_id: str) -> str:
        """Records keep only a keyed hash of the client's X-Request-ID: it may hold an identifier."""
        return self.audit_key.request_id_hash(request_id)

    async def record(self, answers: Sequence[ClassifyResponse], *, client_id: str | None) -> None:
        """Put the rows of ``answers`` (one request's) on record, then count them in the metrics.
        Never answer a prediction that is not on record: any failure of the sink is a 503 Problem."""
        rows = [
            row
            for answer in answers
            for row in prediction_rows(
                answer, request_id_hash=self.request_id_hash(answer.request_id), client_id=client_id
            )
        ]
        try:
            await self.sink.record(rows)
        except RecordUnavailable as exc:
            raise Problem(
                "record-unavailable", str(exc), reason="record_unavailable", headers={"Retry-After": "5"}
            ) from None
        except Exception as exc:  # noqa: BLE001
            log.error("prediction sink failed", exc_info=exc)
            raise Problem(
                "record-unavailable", "the prediction could not be recorded", reason="record_unavailable",
                headers={"Retry-After": "5"},
            ) from None  # fmt: skip
        for answer in answers:
            count_answer(answer)

    async def caught_up(self) -> bool:
        """Answers go out once their record is journaled (KDOCT_RECORD_ACK=spool) and the insert follows
        within 0.25 s: before a read or feedback, this worker inserts what it has answered (immediate
        when nothing waits), so a client finds what it was just answered. A database that does not take
        them in time (READ_YOUR_ANSWER_S) leaves the read to what is there: False."""
        return await self.sink.flush(READ_YOUR_ANSWER_S)


def count_answer(answer: ClassifyResponse) -> None:
    """Metrics per answered upload (a volume counts once, by its volume result), by its model's name."""
    model = answer.model.name
    prometheus.PREDICTIONS.labels(model=model, label=answer.label).inc()
    prometheus.PREDICTION_CONFIDENCE.labels(model=model).observe(answer.confidence)
    if answer.refer:
        prometheus.REFERRALS.labels(model=model).inc()
    for judged in answer.frames or [answer]:
        if judged.gradable is not None:
            gate_outcome = "gradable" if judged.gradable else judged.reason
            prometheus.SAFETY_GATE.labels(model=model, outcome=gate_outcome).inc()
    drift.count_ood_scores(answer)
    opinion = answer.second_opinion
    if opinion is not None:
        prometheus.SECOND_OPINIONS.labels(outcome=outcome(answer.label, opinion.label)).inc()
