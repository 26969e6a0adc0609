"""The cheaper record path: rows built without deep copies, live appends without the id lookup."""

from __future__ import annotations

import numpy as np
import pytest

from kdoct_testing.chain import CHAIN_KEY
from service.db.audit import verify
from service.db.chain import append_predictions
from service.db.rows import normalise_row


def test_normalise_row_makes_numpy_values_plain_and_copies_what_it_keeps(record_factory):
    record = record_factory(
        confidence=np.float32(0.75),
        second_opinion={"label": "normal", "probabilities": {"normal": np.float32(0.75)}},
    )
    row = normalise_row(record)
    assert type(row["confidence"]) is float and row["confidence"] == 0.75
    assert type(row["second_opinion"]["probabilities"]["normal"]) is float
    with pytest.raises(ValueError, match="lacks field.*label"):
        normalise_row({k: v for k, v in record.items() if k != "label"})
    row["probabilities"]["normal"] = 0.0  # a copy: the answered record is never changed
    assert record["probabilities"]["normal"] == 0.7


def test_live_appends_skip_the_lookup_and_a_replay_of_them_is_still_idempotent(engine, record_factory):
    rows = [normalise_row(record_factory()) for _ in range(3)]
    assert append_predictions(engine, rows[:2], new_ids=True, key=CHAIN_KEY).count == 2
    assert append_predictions(engine, rows[2:], new_ids=True, key=CHAIN_KEY).count == 1
    # A commit whose acknowledgement was lost is spooled and replayed: nothing is doubled.
    assert append_predictions(engine, rows, key=CHAIN_KEY).count == 0
    report = verify(engine, key=CHAIN_KEY)
    assert report.ok and report.rows_checked == 3


def test_a_spool_line_written_before_the_gate_columns_replays_with_the_same_hash(record_factory):
    import json

    from service.db.chain import keyed_link_hash
    from service.db.rows import LATER_FIELDS, row_from_json, row_to_json

    row = normalise_row(record_factory())
    old_line = json.loads(row_to_json(row))
    for name in LATER_FIELDS:
        del old_line[name]  # what the spool held before revision 0005
    replayed = row_from_json(json.dumps(old_line))
    assert all(replayed[name] is None for name in LATER_FIELDS)
    replayed_link = keyed_link_hash(CHAIN_KEY, "0" * 64, {**replayed, "sequence": 1})
    assert replayed_link == keyed_link_hash(CHAIN_KEY, "0" * 64, {**row, "sequence": 1})
    gated = normalise_row(
        record_factory(gradable=False, gate_reason="out_of_distribution", ood_score=np.float32(2.5))
    )
    assert row_from_json(row_to_json(gated))["gate_reason"] == "out_of_distribution"
    assert type(gated["ood_score"]) is float
