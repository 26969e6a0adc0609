"""The cheaper record path: rows built without deep copies, live appends without the id lookup."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import numpy as np

from service.db.audit import verify
from service.db.chain import append_predictions
from service.db.rows import row_from_record
from service.records import PredictionRecord


def make_record() -> PredictionRecord:
    return PredictionRecord(
        id=uuid.uuid4(),
        request_id=uuid.uuid4().hex,
        model_name="kdoct-student",
        model_version="0.1.0",
        model_sha256="a" * 64,
        input_sha256="b" * 64,
        format="jpeg",
        width=512,
        height=496,
        probabilities={"normal": 0.7, "drusen": 0.2, "cnv": 0.1},
        label="normal",
        confidence=0.7,
        refer=False,
        timing_ms={"decode": 1.25, "queue": 0.1, "inference": 8.0, "total": 9.5},
        created_at=datetime.now(UTC),
        second_opinion={"label": "normal", "probabilities": {"normal": np.float32(0.75)}},
    )


def test_row_from_record_matches_the_asdict_form_with_numpy_values_made_plain():
    record = make_record()
    row = row_from_record(record)
    from_dict = row_from_record({k: v for k, v in dataclasses.asdict(record).items()})
    assert row == from_dict
    assert type(row["second_opinion"]["probabilities"]["normal"]) is float
    row["probabilities"]["normal"] = 0.0  # a copy: the answered record is never changed
    assert record.probabilities["normal"] == 0.7


def test_live_appends_skip_the_lookup_and_a_replay_of_them_is_still_idempotent(sqlite_engine):
    rows = [row_from_record(make_record()) for _ in range(3)]
    assert append_predictions(sqlite_engine, rows[:2], new_ids=True) == 2
    assert append_predictions(sqlite_engine, rows[2:], new_ids=True) == 1
    # A commit whose acknowledgement was lost is spooled and replayed: nothing is doubled.
    assert append_predictions(sqlite_engine, rows) == 0
    report = verify(sqlite_engine)
    assert report.ok and report.rows_checked == 3
