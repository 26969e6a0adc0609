"""A small set of prediction records with clinician feedback whose real-world performance figures are
worked out by hand (the query, the API and the monthly report are all checked against it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import make_record
from service.db.chain import append_predictions
from service.db.rows import normalise_row
from service.db.tables import Feedback

__all__ = ["CLASSES", "MODEL_A", "MODEL_B", "add_feedback_rows", "store_known_feedback"]

CLASSES = ("normal", "drusen", "cnv")
MODEL_A = {"model_name": "kdoct-student", "model_version": "0.1.0", "model_sha256": "a" * 64}
MODEL_B = {"model_name": "kdoct-student", "model_version": "0.2.0", "model_sha256": "b" * 64}


def _at(day: int, hour: int = 12, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, 30, tzinfo=UTC)


def _probabilities(label: str, confidence: float) -> dict[str, float]:
    rest = (1.0 - confidence) / (len(CLASSES) - 1)
    return {name: confidence if name == label else rest for name in CLASSES}


# (model, created_at, predicted, confidence, gradable, feedback labels oldest first)
# December 2026, model A; weeks (ISO, from Monday): 2026-11-30 and 2026-12-07.
KNOWN = [
    (MODEL_A, _at(1, 0), "normal", 0.95, True, ["normal"]),  # 1 tp normal
    (MODEL_A, _at(2), "normal", 0.90, True, ["drusen"]),  # 2 confident answer contradicted
    (MODEL_A, _at(3), "drusen", 0.60, True, ["cnv", "drusen"]),  # 3 the later feedback wins: tp drusen
    (MODEL_A, _at(8), "cnv", 0.85, True, ["cnv"]),  # 4 tp cnv
    (MODEL_A, _at(9), "cnv", 0.70, True, ["drusen"]),  # 5 wrong, but not confident
    (MODEL_A, _at(10), "normal", 0.99, False, ["cnv"]),  # 6 ungradable: referred, not in the class figures
    (MODEL_A, _at(11), "drusen", 0.90, True, []),  # 7 no feedback
    (MODEL_A, _at(12), "normal", 0.90, None, ["normal"]),  # 8 gate off: answered, counts
    (MODEL_A, _at(15, month=11), "cnv", 0.90, True, ["normal"]),  # 9 November
    (MODEL_B, _at(4), "normal", 0.80, True, ["normal"]),  # 10 model B, confident (= threshold), right
    (MODEL_B, _at(5), "drusen", 0.50, True, []),  # 11 model B, no feedback
]


def add_feedback_rows(engine: Engine, feedback: list[tuple[uuid.UUID, str, datetime]]) -> None:
    """Feedback rows (prediction id, label, created_at) as POST /predictions/{id}/feedback stores them."""
    with Session(engine) as session:
        session.add_all(
            Feedback(
                id=uuid.uuid4(), prediction_id=pid, label=label, note=None, created_at=when, client_id="t"
            )
            for pid, label, when in feedback
        )
        session.commit()


def store_known_feedback(engine: Engine) -> list[uuid.UUID]:
    """Append KNOWN to the chain and its feedback beside it; the prediction ids, in KNOWN's order."""
    records, feedback = [], []
    for model, created, label, confidence, gradable, labels in KNOWN:
        record = make_record(
            **model,
            created_at=created,
            label=label,
            confidence=confidence,
            probabilities=_probabilities(label, confidence),
            gradable=gradable,
            refer=confidence < 0.8 or gradable is False,
        )
        records.append(record)
        feedback += [
            (record["id"], given, created + timedelta(hours=1 + i)) for i, given in enumerate(labels)
        ]
    append_predictions(engine, [normalise_row(r) for r in records], key=CHAIN_KEY)
    add_feedback_rows(engine, feedback)
    return [r["id"] for r in records]
