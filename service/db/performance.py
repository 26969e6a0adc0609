"""What the real-world performance figures are counted from: predictions joined with the clinician's
feedback, aggregated in the database, per model (name, version, sha256) and, optionally, per time
bucket (day, ISO week from Monday, or calendar month, in UTC) of the prediction's created_at.

Only the latest feedback on a prediction counts (latest created_at; equal times: the greater id): a
clinician's later label supersedes an earlier one; feedback rows themselves are append-only. Every
count comes out of GROUP BY, so a month of predictions is never loaded row by row; the same queries run
on SQLite and PostgreSQL (the bucket is the one expression that differs). Nothing here is logged in
prediction_reads: these are counts, no prediction is shown to anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from sqlalchemy import Date, Integer, String, case, cast, func, literal, null, select
from sqlalchemy.orm import Session

from service.db.rows import utc
from service.db.tables import Feedback, Prediction

__all__ = [
    "BUCKETS",
    "Bucket",
    "FeedbackData",
    "latest_feedback",
    "FeedbackTally",
    "ModelKey",
    "PredictionTotal",
    "feedback_data",
]

Bucket = Literal["day", "week", "month"]
BUCKETS: tuple[Bucket, ...] = ("day", "week", "month")


@dataclass(frozen=True, order=True)
class ModelKey:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class FeedbackTally:
    """How many predictions of ``model`` in ``bucket`` (None: the whole window) answered ``predicted``
    and whose latest feedback says ``actual``, by the safety gate's verdict and whether the answer was
    confident (calibrated confidence >= the threshold)."""

    model: ModelKey
    bucket: date | None
    predicted: str
    actual: str
    gradable: bool | None
    confident: bool
    count: int


@dataclass(frozen=True)
class PredictionTotal:
    """Every prediction of ``model`` in ``bucket``, with feedback or not (the coverage's denominator)."""

    model: ModelKey
    bucket: date | None
    predictions: int


@dataclass(frozen=True)
class FeedbackData:
    tallies: list[FeedbackTally]
    totals: list[PredictionTotal]
    # Each model's classes, in its probabilities' order (the bundle's class_names).
    class_names: dict[ModelKey, tuple[str, ...]]


def _bucket_start(session: Session, bucket: Bucket):
    """The first day (UTC) of the prediction's bucket, as an SQL expression."""
    created = Prediction.created_at
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.date_trunc(bucket, func.timezone("UTC", created)), Date)
    # SQLite keeps the UTC time as text (service/db/rows.py normalises it before it is stored).
    if bucket == "day":
        return func.date(created)
    if bucket == "month":
        return func.strftime("%Y-%m-01", created)
    back_to_monday = (cast(func.strftime("%w", created), Integer) + 6) % 7
    return func.date(created, literal("-") + cast(back_to_monday, String) + literal(" days"))


def _as_date(value) -> date | None:
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    return date.fromisoformat(str(value)[:10])


def latest_feedback():
    """Each prediction's latest feedback label (prediction_id, label), as a subquery."""
    ranked = select(
        Feedback.prediction_id,
        Feedback.label,
        func.row_number()
        .over(partition_by=Feedback.prediction_id, order_by=(Feedback.created_at.desc(), Feedback.id.desc()))
        .label("rank"),
    ).subquery()
    return (
        select(ranked.c.prediction_id, ranked.c.label).where(ranked.c.rank == 1).subquery("latest_feedback")
    )


def feedback_data(
    session: Session,
    *,
    confident_threshold: float,
    since: datetime | None = None,
    until: datetime | None = None,
    model_sha256: str | None = None,
    bucket: Bucket | None = None,
) -> FeedbackData:
    """The counts of predictions created in [since, until) (either end open when None), of one model
    (by bundle sha256) or all."""
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}")
    where = []
    if since is not None:
        where.append(Prediction.created_at >= utc(since))
    if until is not None:
        where.append(Prediction.created_at < utc(until))
    if model_sha256 is not None:
        where.append(Prediction.model_sha256 == model_sha256)
    model = (Prediction.model_name, Prediction.model_version, Prediction.model_sha256)
    start = _bucket_start(session, bucket).label("bucket") if bucket else null().label("bucket")
    group = (*model, start) if bucket else model

    totals = [
        PredictionTotal(ModelKey(name, version, sha), _as_date(when), count)
        for name, version, sha, when, count in session.execute(
            select(*model, start, func.count()).where(*where).group_by(*group)
        )
    ]

    latest = latest_feedback()
    confident = case((Prediction.confidence >= confident_threshold, True), else_=False).label("confident")
    tally_query = (
        select(*model, start, Prediction.label, latest.c.label, Prediction.gradable, confident, func.count())
        .join(latest, latest.c.prediction_id == Prediction.id)
        .where(*where)
        .group_by(*group, Prediction.label, latest.c.label, Prediction.gradable, confident)
    )
    tallies = [
        FeedbackTally(
            ModelKey(name, version, sha),
            _as_date(when),
            predicted,
            actual,
            None if gradable is None else bool(gradable),
            bool(is_confident),
            count,
        )
        for name, version, sha, when, predicted, actual, gradable, is_confident, count in session.execute(
            tally_query
        )
    ]

    class_names = {}
    for key in sorted({total.model for total in totals}):
        probabilities = session.scalar(
            select(Prediction.probabilities)
            .where(
                Prediction.model_name == key.name,
                Prediction.model_version == key.version,
                Prediction.model_sha256 == key.sha256,
            )
            .limit(1)
        )
        class_names[key] = tuple(probabilities or ())
    return FeedbackData(tallies=tallies, totals=totals, class_names=class_names)
