"""The query layer: stable cursor pages newest first, filters, feedback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from kdoct_testing.chain import CHAIN_KEY
from service.db.chain import append_predictions
from service.db.queries import PredictionFilter, add_feedback, get_prediction, list_predictions, log_reads
from service.db.rows import normalise_row
from service.db.session import make_sessionmaker
from service.db.tables import Feedback, PredictionRead


def test_pages_cover_every_row_once_with_filters(engine: Engine, record_factory) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        record_factory(
            created_at=start + timedelta(minutes=i),
            label="cnv" if i % 3 == 0 else "normal",
            refer=i % 2 == 0,
        )
        for i in range(12)
    ]
    append_predictions(engine, [normalise_row(r) for r in records], key=CHAIN_KEY)
    with make_sessionmaker(engine)() as session:
        seen, cursor = [], None
        while True:
            page = list_predictions(session, PredictionFilter(), limit=5, cursor=cursor)
            seen += [p.id for p in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [r["id"] for r in reversed(records)]

        cnv = list_predictions(session, PredictionFilter(label="cnv"), limit=100).items
        assert {p.id for p in cnv} == {r["id"] for r in records if r["label"] == "cnv"}
        window = PredictionFilter(
            created_from=start + timedelta(minutes=2), created_to=start + timedelta(minutes=5)
        )
        assert [p.id for p in list_predictions(session, window).items] == [r["id"] for r in records[4:1:-1]]
        referred = list_predictions(session, PredictionFilter(refer=True, label="normal")).items
        assert {p.id for p in referred} == {r["id"] for r in records if r["refer"] and r["label"] == "normal"}

        with pytest.raises(ValueError, match="cursor"):
            list_predictions(session, PredictionFilter(), cursor="not-a-cursor")


def test_feedback_sits_beside_its_prediction(engine: Engine, record_factory) -> None:
    record = record_factory()
    append_predictions(engine, [normalise_row(record)], key=CHAIN_KEY)
    with make_sessionmaker(engine)() as session:
        feedback = add_feedback(session, record["id"], "drusen", "small drusen nasally", "clinic-a")
        assert feedback is not None and feedback.prediction_id == record["id"]
        assert add_feedback(session, record_factory()["id"], "cnv", None, None) is None
        assert get_prediction(session, record["id"]).label == record["label"]


def test_cursor_beyond_a_64_bit_sequence_is_refused_not_sent_to_the_database(engine: Engine) -> None:
    import base64

    huge = base64.urlsafe_b64encode(b"s" + b"9" * 20).decode().rstrip("=")
    with make_sessionmaker(engine)() as session, pytest.raises(ValueError, match="invalid cursor"):
        list_predictions(session, PredictionFilter(), cursor=huge)


def test_feedback_label_must_be_one_of_the_models_classes(engine: Engine, record_factory) -> None:
    record = record_factory()
    append_predictions(engine, [normalise_row(record)], key=CHAIN_KEY)
    with make_sessionmaker(engine)() as session:
        with pytest.raises(ValueError, match=r"unknown label 'glaucoma'.*cnv"):
            add_feedback(session, record["id"], "glaucoma", None, None)
        assert add_feedback(session, record["id"], "cnv", None, None) is not None


def test_reads_and_feedback_are_written_while_the_writer_appends(engine: Engine, make_rows) -> None:
    """The record writer commits between a request's read and its write (on SQLite in WAL mode a read
    transaction overtaken by a commit cannot write: "database is locked" at once); neither the read
    log nor feedback may fail for that."""
    append_predictions(engine, make_rows(2), key=CHAIN_KEY)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        page = list_predictions(session, PredictionFilter())
        append_predictions(engine, make_rows(1), key=CHAIN_KEY)  # the writer, on its own connection
        log_reads(session, page.items, client_id="ward-7", request_id="hmac-sha256:ab", route="/predictions")
    with sessions() as session:
        prediction = get_prediction(session, page.items[0].id)
        append_predictions(engine, make_rows(1), key=CHAIN_KEY)
        feedback = add_feedback(session, prediction.id, prediction.label, None, "ward-7")
    with sessions() as session:
        reads = session.scalars(select(PredictionRead.prediction_id)).all()
        assert sorted(reads) == sorted(item.id for item in page.items)
        assert session.get(Feedback, feedback.id) is not None
