"""The model lifecycle's reads and writes of its two ledgers (revision 0008; service/db/ledger.py):
shadow results grouped for agreement, the candidate's labels against clinician feedback, and the
model events (the newest names the bundle every worker serves)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from service.audit_key import AuditKey
from service.db import ledger
from service.db.performance import latest_feedback
from service.db.tables import ModelEvent, ShadowResult

__all__ = [
    "ModelEventRow",
    "append_event",
    "candidate_feedback_pairs",
    "events",
    "head_event",
    "shadow_counts",
    "store_shadow_results",
]


@dataclass(frozen=True)
class ModelEventRow:
    sequence: int
    created_at: datetime
    action: str
    actor: str
    from_sha256: str
    from_path: str
    to_sha256: str
    to_name: str
    to_version: str
    to_path: str
    evidence: dict[str, Any]


class EventConflict(Exception):
    """Another promotion or rollback was appended since this one read the newest event."""


def store_shadow_results(engine: Engine, rows: list[dict[str, Any]], *, key: AuditKey) -> None:
    ledger.append(engine, ledger.SHADOW_RESULTS, rows, key=key)


def shadow_counts(
    engine: Engine, candidate_sha256: str
) -> list[tuple[str, str, str | None, bool | None, bool | None, int]]:
    """(current label, candidate label, teacher label, current gradable, candidate gradable, count) of
    the candidate's shadow results."""
    s = ShadowResult
    columns = (s.current_label, s.candidate_label, s.teacher_label, s.current_gradable, s.candidate_gradable)
    query = select(*columns, func.count()).where(s.candidate_sha256 == candidate_sha256).group_by(*columns)
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def candidate_feedback_pairs(engine: Engine, candidate_sha256: str) -> list[tuple[str, str, int]]:
    """(clinician's label, candidate's label, count) over the shadowed predictions that have feedback;
    a prediction's latest feedback counts, earlier ones are superseded."""
    labels = latest_feedback()
    query = (
        select(labels.c.label, ShadowResult.candidate_label, func.count())
        .join(labels, labels.c.prediction_id == ShadowResult.prediction_id)
        .where(ShadowResult.candidate_sha256 == candidate_sha256)
        .group_by(labels.c.label, ShadowResult.candidate_label)
    )
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


def _event(row) -> ModelEventRow:
    return ModelEventRow(**{name: row[name] for name in ModelEventRow.__dataclass_fields__})


def head_event(engine: Engine) -> ModelEventRow | None:
    """The newest promotion or rollback: what every worker serves; None before the first."""
    found = events(engine, limit=1)
    return found[0] if found else None


def events(engine: Engine, *, limit: int | None = None) -> list[ModelEventRow]:
    """Model events, newest first."""
    query = select(ModelEvent.__table__).order_by(ModelEvent.sequence.desc())
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [_event(row) for row in conn.execute(query).mappings()]


def append_event(
    engine: Engine, values: dict[str, Any], *, key: AuditKey, after_sequence: int | None
) -> ModelEventRow:
    """Append one event, refused (EventConflict) unless the newest event is still `after_sequence`
    (None: there is none), so two promotions decided on the same state cannot both land."""
    row = {"id": uuid.uuid4(), "created_at": datetime.now(UTC), **values}

    def expect(last_sequence: int | None) -> None:
        if last_sequence != after_sequence:
            raise EventConflict(
                f"another model event (sequence {last_sequence}) landed since this one was decided on "
                f"sequence {after_sequence}: read the state again and retry"
            )

    sequence = ledger.append(engine, ledger.MODEL_EVENTS, [row], key=key, check_last=expect)
    return _event({**row, "sequence": sequence})
