"""The cheaper record path: rows built without deep copies, live appends without the id lookup."""

from __future__ import annotations

import dataclasses

import numpy as np

from service.db.audit import verify
from service.db.chain import append_predictions
from service.db.rows import row_from_record


def test_row_from_record_matches_the_asdict_form_with_numpy_values_made_plain(record_factory):
    record = record_factory(second_opinion={"label": "normal", "probabilities": {"normal": np.float32(0.75)}})
    row = row_from_record(record)
    from_dict = row_from_record({k: v for k, v in dataclasses.asdict(record).items()})
    assert row == from_dict
    assert type(row["second_opinion"]["probabilities"]["normal"]) is float
    row["probabilities"]["normal"] = 0.0  # a copy: the answered record is never changed
    assert record.probabilities["normal"] == 0.7


def test_live_appends_skip_the_lookup_and_a_replay_of_them_is_still_idempotent(engine, record_factory):
    rows = [row_from_record(record_factory()) for _ in range(3)]
    assert append_predictions(engine, rows[:2], new_ids=True).count == 2
    assert append_predictions(engine, rows[2:], new_ids=True).count == 1
    # A commit whose acknowledgement was lost is spooled and replayed: nothing is doubled.
    assert append_predictions(engine, rows).count == 0
    report = verify(engine)
    assert report.ok and report.rows_checked == 3
