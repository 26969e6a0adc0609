"""The real-world performance counts (service/db/performance.py) and the figures made of them
(service/monitoring/summary.py), on SQLite and PostgreSQL, against rows worked out by hand
(kdoct_testing/feedback.py): latest feedback wins, ungradable apart, buckets in UTC, one model or all."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from kdoct_testing.feedback import MODEL_A, MODEL_B, add_feedback_rows, store_known_feedback
from service.db.performance import feedback_data
from service.db.session import make_engine, make_sessionmaker
from service.monitoring.performance import wilson
from service.monitoring.summary import load_performance

DECEMBER = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def _figures(window):
    return {c.name: (c.tp, c.fn, c.fp, c.tn, c.contradicted_confident) for c in window.classes}


def test_december_of_model_a_by_hand(engine: Engine) -> None:
    store_known_feedback(engine)
    since, until = DECEMBER
    with make_sessionmaker(engine)() as session:
        report = load_performance(
            session, confident_threshold=0.8, since=since, until=until, model_sha256=MODEL_A["model_sha256"]
        )
    assert [m.model.version for m in report.models] == ["0.1.0"]
    model = report.models[0]
    assert model.class_names == ["normal", "drusen", "cnv"] and model.buckets == []
    overall = model.overall
    # Rows 1-8 were made in December; 7 have feedback (not row 7); row 6 is ungradable.
    assert (overall.predictions, overall.with_feedback, overall.answered_with_feedback) == (8, 7, 6)
    assert overall.feedback_coverage == pytest.approx(7 / 8)
    assert _figures(overall) == {
        "normal": (2, 0, 1, 3, 1),  # rows 1 and 8 right; row 2 said drusen, at 0.90: contradicted
        "drusen": (1, 2, 0, 3, 0),  # row 3 (its later feedback); rows 2 and 5 missed it
        "cnv": (1, 0, 1, 4, 0),  # row 4; row 5 was drusen, at 0.70: not a confident answer
    }
    drusen = overall.classes[1]
    assert (drusen.sensitivity.value, drusen.sensitivity.low) == (1 / 3, wilson(1, 3).low)
    assert drusen.specificity.high == 1.0 and drusen.ppv.value == 1.0
    assert overall.classes[2].ppv.model_dump() == vars(wilson(1, 2))
    assert overall.contradicted_confident == 1
    assert overall.agreement.value == pytest.approx(4 / 6)
    assert overall.ungradable.with_feedback == 1 and overall.ungradable.by_feedback_label == {"cnv": 1}


def test_buckets_and_models(engine: Engine) -> None:
    store_known_feedback(engine)
    with make_sessionmaker(engine)() as session:
        if engine.dialect.name == "postgresql":
            # Buckets are UTC days whatever the session's time zone: row 1 (00:30 UTC on 1 December) is
            # still 30 November in New York.
            session.execute(text("SET TIME ZONE 'America/New_York'"))
        weekly = load_performance(session, confident_threshold=0.8, since=DECEMBER[0], bucket="week")
        monthly = load_performance(session, confident_threshold=0.8, bucket="month")
        stricter = load_performance(session, confident_threshold=0.95, since=DECEMBER[0])
    a, b = weekly.models
    assert (a.model.sha256, b.model.sha256) == (MODEL_A["model_sha256"], MODEL_B["model_sha256"])
    monday = datetime(2026, 11, 30, tzinfo=UTC)
    assert [
        (w.start, w.end, w.predictions, w.with_feedback, w.answered_with_feedback) for w in a.buckets
    ] == [
        (monday, monday + timedelta(days=7), 3, 3, 3),
        (monday + timedelta(days=7), monday + timedelta(days=14), 5, 4, 3),
    ]
    assert _figures(a.buckets[0])["normal"] == (1, 0, 1, 1, 1)
    assert sum(w.predictions for w in a.buckets) == a.overall.predictions == 8
    # Model B: one confident answer (0.80, the threshold itself), right; one without feedback.
    assert (b.overall.predictions, b.overall.with_feedback, b.overall.contradicted_confident) == (2, 1, 0)
    assert _figures(b.overall)["normal"] == (1, 0, 0, 0, 0)
    # All time, by month: November holds row 9, a confident cnv the clinician called normal.
    a_months = monthly.models[0].buckets
    assert [(w.start.date(), w.end.date(), w.predictions) for w in a_months] == [
        (date(2026, 11, 1), date(2026, 12, 1), 1),
        (date(2026, 12, 1), date(2027, 1, 1), 8),
    ]
    assert a_months[0].contradicted_confident == 1 and monthly.models[0].overall.contradicted_confident == 2
    # Only answers at 0.95 or above are confident now: row 2 (0.90) no longer counts.
    assert stricter.models[0].overall.contradicted_confident == 0


def test_latest_feedback_wins_and_nothing_without_feedback_counts(engine: Engine) -> None:
    ids = store_known_feedback(engine)
    # Row 7 gets feedback now, and row 1 a correction: cnv, after its first "normal".
    later = datetime(2026, 12, 20, tzinfo=UTC)
    add_feedback_rows(engine, [(ids[6], "drusen", later), (ids[0], "cnv", later)])
    with make_sessionmaker(engine)() as session:
        data = feedback_data(
            session, confident_threshold=0.8, since=DECEMBER[0], model_sha256=MODEL_A["model_sha256"]
        )
        report = load_performance(session, confident_threshold=0.8, since=DECEMBER[0], model_sha256="c" * 64)
    assert report.models == []
    assert sum(t.count for t in data.tallies) == 8  # one per prediction with feedback, however many it has
    pairs = Counter()
    for tally in data.tallies:
        if tally.gradable is not False:
            pairs[(tally.actual, tally.predicted)] += tally.count
    assert (
        pairs[("cnv", "normal")] == 1
        and pairs[("normal", "normal")] == 1
        and pairs[("drusen", "drusen")] == 2
    )


def test_a_bad_bucket_is_refused(engine: Engine) -> None:
    with make_sessionmaker(engine)() as session, pytest.raises(ValueError, match="bucket"):
        feedback_data(session, confident_threshold=0.8, bucket="year")


def test_the_runtime_role_may_compute_them(pg_url: str, runtime_url: str) -> None:
    """What the service logs in as (SELECT and INSERT only) reads every table the figures need."""
    owner = make_engine(pg_url)
    store_known_feedback(owner)
    owner.dispose()
    runtime = make_engine(runtime_url)
    try:
        with make_sessionmaker(runtime)() as session:
            report = load_performance(session, confident_threshold=0.8, since=DECEMBER[0], bucket="month")
    finally:
        runtime.dispose()
    assert [m.overall.with_feedback for m in report.models] == [7, 1]
