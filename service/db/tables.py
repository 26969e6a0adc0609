"""The record tables. Predictions are append-only (a trigger refuses UPDATE/DELETE on PostgreSQL and
SQLite, see alembic/versions/0002_append_only.py) and hash-chained (see service/db/chain.py); from the
chain epoch that revision 0006 opened, the links are keyed with the audit key."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiClient",
    "Base",
    "ChainEpoch",
    "DicomExportAttempt",
    "Feedback",
    "ModelEvent",
    "Prediction",
    "PredictionRead",
    "ShadowResult",
]

SHA256_HEX = 64


class Base(DeclarativeBase):
    # Named constraints, so migrations can refer to them identically on SQLite and PostgreSQL.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Prediction(Base):
    """One answered prediction (one row per frame for DICOM volumes). Never the image, never a patient
    identifier: the input is identified by the sha256 of the uploaded bytes only."""

    __tablename__ = "predictions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # Chain position: gives the audit a stable order that does not depend on clocks or uuids.
    sequence: Mapped[int] = mapped_column(BigInteger, unique=True)
    # "hmac-sha256:<hex>" of the client's X-Request-ID under the audit key (service/audit_key.py), never
    # the value sent: a client may put an identifier there. Rows written before revision 0004 hold the
    # value as sent. Indexed for GET /predictions?request_id=... (hashed by the service).
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The API client's name (names are never reused: revoked clients keep their row). None when auth
    # is disabled for the local demo.
    client_id: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    teacher_model_name: Mapped[str | None] = mapped_column(String(128))
    teacher_model_version: Mapped[str | None] = mapped_column(String(64))
    teacher_model_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX))
    input_sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    format: Mapped[str] = mapped_column(String(16))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    frame_index: Mapped[int | None] = mapped_column(Integer)
    # A hash naming the DICOM volume, never a DICOM UID.
    volume_id: Mapped[str | None] = mapped_column(String(SHA256_HEX))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    refer: Mapped[bool] = mapped_column(Boolean)
    second_opinion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    timing_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    # The safety gate's verdict (revision 0005): None on earlier rows and with the gate off.
    gradable: Mapped[bool | None] = mapped_column(Boolean, index=True)
    gate_reason: Mapped[str | None] = mapped_column(String(64))
    ood_score: Mapped[float | None] = mapped_column(Float)
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX))
    row_hash: Mapped[str] = mapped_column(String(SHA256_HEX))
    # How row_hash was computed (service/db/chain.py): "sha256" (unkeyed, rows from before revision
    # 0006) or "hmac-sha256" (keyed with the audit key). Which one a row must use is fixed by its
    # sequence and chain_epochs, never by this claim; the claim makes a forged unkeyed row easy to name.
    link_rule: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        # The query API's stable order and its time-range filter.
        Index("ix_predictions_created_at_id", "created_at", "id"),
        Index("ix_predictions_label", "label"),
        Index("ix_predictions_model_version", "model_version"),
    )


class ApiClient(Base):
    """A holder of an API key. Only the key's sha256 is stored; the key is shown once at creation."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_hash: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    # The first characters of the key, enough to tell keys apart in `apikey list`, useless to an attacker.
    key_prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Feedback(Base):
    """A clinician's label for a prediction. Predictions never change; feedback sits beside them."""

    __tablename__ = "feedback"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    prediction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("predictions.id"), index=True)
    label: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    client_id: Mapped[str | None] = mapped_column(String(64))


class PredictionRead(Base):
    """Who read which prediction: one row per prediction in each answer of the query API, written
    before the answer goes out (no read without its row). Append-only like the predictions."""

    __tablename__ = "prediction_reads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    prediction_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("predictions.id"), index=True)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # The API client's name; None when auth is disabled for the local demo.
    client_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # The reading request's X-Request-ID, keyed-hashed like predictions.request_id.
    request_id: Mapped[str] = mapped_column(String(128))
    # The route template that answered: one prediction, or a page of the list.
    route: Mapped[str] = mapped_column(String(64))


class ChainEpoch(Base):
    """From which sequence on the predictions chain uses which link rule. Written by the migrations
    (the tables' owner), never by the service: the runtime role may only read it, so it cannot move
    the start of the keyed epoch to pass off an unkeyed row (revision 0006)."""

    __tablename__ = "chain_epochs"

    first_sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    rule: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DicomExportAttempt(Base):
    """One attempt to deliver one result object (the SR or the PDF of a series) of the DICOM node, and
    its outcome (revision 0007; service/db/export_attempts.py). Append-only like the predictions. Never
    a UID or a patient attribute: the series is named by its headline prediction's id."""

    __tablename__ = "dicom_export_attempts"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # The headline prediction of the series (not a foreign key: an attempt is noted even when the
    # prediction's own record still waits in the spool).
    prediction_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "sr" | "pdf"
    # "cstore AE@host:port" or "stow <url>": where it went, never what it held.
    destination: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    # delivered | failed | unconfirmed | dead_lettered | replayed
    outcome: Mapped[str] = mapped_column(String(16))
    # The error's class and a message free of UIDs; None when delivered.
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ShadowResult(Base):
    """A candidate bundle's result on a live request it shadowed (service/lifecycle/shadow.py), beside
    the prediction that was answered (revision 0008). Append-only and chained like the predictions, in
    a ledger of its own (service/db/ledger.py). Never the image: the prediction's id names the input."""

    __tablename__ = "shadow_results"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # The answered prediction it shadows (not a foreign key: a shadow result may be stored while the
    # prediction's own record still waits in the spool).
    prediction_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    candidate_name: Mapped[str] = mapped_column(String(128))
    candidate_version: Mapped[str] = mapped_column(String(64))
    candidate_sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    # The student that answered, and what it and the teacher (when it ran) said.
    current_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    current_label: Mapped[str] = mapped_column(String(32))
    current_gradable: Mapped[bool | None] = mapped_column(Boolean)
    teacher_label: Mapped[str | None] = mapped_column(String(32))
    candidate_label: Mapped[str] = mapped_column(String(32))
    candidate_probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    candidate_confidence: Mapped[float] = mapped_column(Float)
    candidate_gradable: Mapped[bool | None] = mapped_column(Boolean)
    candidate_reason: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX))
    row_hash: Mapped[str] = mapped_column(String(SHA256_HEX))


class ModelEvent(Base):
    """A change of the serving student: a promotion or a rollback (revision 0008;
    service/lifecycle/promotion.py). Append-only and chained (service/db/ledger.py); the newest event
    names the bundle every worker serves (service/lifecycle/rollout.py)."""

    __tablename__ = "model_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(16))  # "promote" | "rollback"
    # Who: an API client's name, or "cli:<OS user>" for the command line.
    actor: Mapped[str] = mapped_column(String(128))
    from_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    from_path: Mapped[str] = mapped_column(Text)
    to_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    to_name: Mapped[str] = mapped_column(String(128))
    to_version: Mapped[str] = mapped_column(String(64))
    # The bundle's directory as the serving hosts see it: what every worker loads and verifies.
    to_path: Mapped[str] = mapped_column(Text)
    # What the decision rested on: shadowed count, agreement, kappa, per-class sensitivity on feedback,
    # the thresholds in force (promotions); the event undone (rollbacks).
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(SHA256_HEX))
    row_hash: Mapped[str] = mapped_column(String(SHA256_HEX))
