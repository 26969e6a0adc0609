"""Reading predictions and recording feedback: what the query API runs. Every read names its reader:
the predictions an answer carries are logged in prediction_reads in the same transaction.

Listing is newest first by chain sequence, which is unique and never changes, so cursor pages
neither skip nor repeat rows while new predictions arrive. The cursor is opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.rows import utc
from service.db.tables import Feedback, Prediction, PredictionRead

__all__ = [
    "PredictionFilter",
    "PredictionPage",
    "add_feedback",
    "decode_cursor",
    "get_prediction",
    "list_predictions",
    "log_reads",
]

MAX_PAGE = 500


@dataclass(frozen=True)
class PredictionFilter:
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    label: str | None = None
    model_version: str | None = None
    refer: bool | None = None
    request_id: str | None = None  # as stored: the keyed hash of the client's id
    gradable: bool | None = None


@dataclass(frozen=True)
class PredictionPage:
    items: list[Prediction]
    next_cursor: str | None


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"s{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Raises ValueError for anything this service did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page") from exc
    # Sequences are 64-bit integers: a longer number is not one this service handed out (and would
    # overflow the database's integer parameter).
    if not text.startswith("s") or not text[1:].isdigit() or len(text) > 20 or int(text[1:]) >= 2**63:
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page")
    return int(text[1:])


def get_prediction(session: Session, prediction_id: uuid.UUID) -> Prediction | None:
    return session.get(Prediction, prediction_id)


def list_predictions(
    session: Session, where: PredictionFilter, *, limit: int = 50, cursor: str | None = None
) -> PredictionPage:
    limit = max(1, min(limit, MAX_PAGE))
    query = select(Prediction).order_by(Prediction.sequence.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(Prediction.sequence < decode_cursor(cursor))
    if where.created_from is not None:
        query = query.where(Prediction.created_at >= utc(where.created_from))
    if where.created_to is not None:
        query = query.where(Prediction.created_at < utc(where.created_to))
    if where.label is not None:
        query = query.where(Prediction.label == where.label)
    if where.model_version is not None:
        query = query.where(Prediction.model_version == where.model_version)
    if where.refer is not None:
        query = query.where(Prediction.refer.is_(where.refer))
    if where.request_id is not None:
        query = query.where(Prediction.request_id == where.request_id)
    if where.gradable is not None:
        query = query.where(Prediction.gradable.is_(where.gradable))
    rows = list(session.scalars(query))
    more = len(rows) > limit
    items = rows[:limit]
    return PredictionPage(items=items, next_cursor=encode_cursor(items[-1].sequence) if more else None)


def _end_read(session: Session) -> None:
    """End the read transaction before writing. SQLite (WAL) cannot turn a read transaction into a
    write once another connection has committed since it began (the record writer does so all the
    time): it fails at once with "database is locked" instead of waiting. A fresh transaction that
    starts with the write waits its turn. What was read stays valid: records are append-only."""
    session.commit()


def log_reads(
    session: Session, predictions: list[Prediction], *, client_id: str | None, request_id: str, route: str
) -> None:
    """Record that ``client_id`` is about to be shown ``predictions``, and commit: the caller answers
    only after this returns, so no prediction leaves the service without its read on record."""
    if not predictions:
        return
    _end_read(session)
    now = datetime.now(UTC)
    session.add_all(
        PredictionRead(
            id=uuid.uuid4(),
            prediction_id=prediction.id,
            read_at=now,
            client_id=client_id,
            request_id=request_id,
            route=route,
        )
        for prediction in predictions
    )
    session.commit()


def add_feedback(
    session: Session, prediction_id: uuid.UUID, label: str, note: str | None, client_id: str | None
) -> Feedback | None:
    """The clinician's label beside the prediction; None when there is no such prediction (yet: a
    prediction still on the spool is not in the database until it is replayed)."""
    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        return None
    if label not in prediction.probabilities:
        raise ValueError(
            f"unknown label {label!r}: this prediction's model knows {', '.join(prediction.probabilities)}"
        )
    _end_read(session)
    feedback = Feedback(
        id=uuid.uuid4(),
        prediction_id=prediction_id,
        label=label,
        note=note,
        created_at=datetime.now(UTC),
        client_id=client_id,
    )
    session.add(feedback)
    session.commit()
    return feedback
