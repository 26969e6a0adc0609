"""The model lifecycle's ledgers (service/db/ledger.py, model_ledgers.py; revision 0008) on SQLite and
real PostgreSQL: chained with the audit key, append-only even for the owner, appendable by the runtime
role, every tampering found by the walk, and two promotions decided on one state never both landed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from kdoct_testing.chain import CHAIN_KEY
from service.audit_key import AuditKey
from service.db.ledger import MODEL_EVENTS, SHADOW_RESULTS, verify_ledger
from service.db.model_ledgers import EventConflict, append_event, events, head_event, store_shadow_results
from service.db.session import make_engine


def shadow_row(label: str = "cnv", candidate_label: str = "drusen") -> dict:
    return {
        "id": uuid.uuid4(),
        "created_at": datetime.now(UTC),
        "prediction_id": uuid.uuid4(),
        "candidate_name": "candidate",
        "candidate_version": "2.0.0",
        "candidate_sha256": "c" * 64,
        "current_sha256": "a" * 64,
        "current_label": label,
        "current_gradable": True,
        "teacher_label": None,
        "candidate_label": candidate_label,
        "candidate_probabilities": {"normal": 0.1, "drusen": 0.6000000000000001, "cnv": 0.3},
        "candidate_confidence": 0.6000000000000001,
        "candidate_gradable": False,
        "candidate_reason": "out_of_distribution",
    }


def event_values(to: str = "c", action: str = "promote") -> dict:
    return {
        "action": action, "actor": "cli:safety-officer", "from_sha256": "a" * 64, "from_path": "/bundles/a",
        "to_sha256": to * 64, "to_name": "candidate", "to_version": "2.0.0", "to_path": f"/bundles/{to}",
        "evidence": {"shadowed": 600, "agreement": 0.93, "kappa": 0.88},
    }  # fmt: skip


def test_both_ledgers_chain_with_the_audit_key_and_read_back_intact(engine: Engine) -> None:
    store_shadow_results(engine, [shadow_row() for _ in range(5)], key=CHAIN_KEY)
    store_shadow_results(engine, [shadow_row("normal", "normal")], key=CHAIN_KEY)
    first = append_event(engine, event_values(), key=CHAIN_KEY, after_sequence=None)
    append_event(engine, event_values("a", "rollback"), key=CHAIN_KEY, after_sequence=first.sequence)
    assert verify_ledger(engine, SHADOW_RESULTS, CHAIN_KEY).rows_checked == 6
    assert verify_ledger(engine, MODEL_EVENTS, CHAIN_KEY).ok
    assert [event.action for event in events(engine)] == ["rollback", "promote"]
    assert head_event(engine).to_path == "/bundles/a"
    # Keyed: the same rows do not verify under another key.
    other = AuditKey(b"another-secret-of-32-bytes-length!")
    assert not verify_ledger(engine, MODEL_EVENTS, other).ok


def test_an_event_decided_on_a_stale_head_is_refused(engine: Engine) -> None:
    first = append_event(engine, event_values(), key=CHAIN_KEY, after_sequence=None)
    with pytest.raises(EventConflict, match="another model event"):
        append_event(engine, event_values("d"), key=CHAIN_KEY, after_sequence=None)
    append_event(engine, event_values("d"), key=CHAIN_KEY, after_sequence=first.sequence)
    assert len(events(engine)) == 2


def _behind_its_back(engine: Engine, table: str, statement: str) -> None:
    """What a superuser could do: switch the append-only triggers off, change a row."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            conn.execute(text(statement))
            conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        else:
            conn.execute(text(f"DROP TRIGGER {table}_no_update"))
            conn.execute(text(f"DROP TRIGGER {table}_no_delete"))
            conn.execute(text(statement))


@pytest.mark.parametrize(
    ("statement", "broken_at", "intact", "reason"),
    [
        ("UPDATE shadow_results SET candidate_label = 'cnv' WHERE sequence = 3", 3, 2, "altered"),
        ("DELETE FROM shadow_results WHERE sequence = 2", 3, 1, "missing"),
    ],
)
def test_the_walk_finds_a_tampered_shadow_result(
    engine: Engine, statement, broken_at, intact, reason
) -> None:
    store_shadow_results(engine, [shadow_row() for _ in range(4)], key=CHAIN_KEY)
    _behind_its_back(engine, "shadow_results", statement)
    report = verify_ledger(engine, SHADOW_RESULTS, CHAIN_KEY)
    assert (report.broken_at, report.rows_checked) == (broken_at, intact)
    assert reason in report.reason


def test_a_rewritten_model_event_is_found(engine: Engine) -> None:
    first = append_event(engine, event_values(), key=CHAIN_KEY, after_sequence=None)
    append_event(engine, event_values("a", "rollback"), key=CHAIN_KEY, after_sequence=first.sequence)
    _behind_its_back(
        engine, "model_events", "UPDATE model_events SET actor = 'someone-else' WHERE sequence = 1"
    )
    report = verify_ledger(engine, MODEL_EVENTS, CHAIN_KEY)
    assert report.broken_at == 1 and "altered" in report.reason


@pytest.mark.parametrize("table", ["shadow_results", "model_events"])
def test_the_ledgers_are_append_only_even_for_the_owner(engine: Engine, table: str) -> None:
    store_shadow_results(engine, [shadow_row()], key=CHAIN_KEY)
    append_event(engine, event_values(), key=CHAIN_KEY, after_sequence=None)
    for statement in (f"UPDATE {table} SET sequence = 7", f"DELETE FROM {table}"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1


@pytest.mark.postgres
def test_the_runtime_role_appends_to_both_ledgers(runtime_url: str) -> None:
    engine = make_engine(runtime_url)
    try:
        store_shadow_results(engine, [shadow_row(), shadow_row()], key=CHAIN_KEY)
        append_event(engine, event_values(), key=CHAIN_KEY, after_sequence=None)
        assert verify_ledger(engine, SHADOW_RESULTS, CHAIN_KEY).rows_checked == 2
        assert verify_ledger(engine, MODEL_EVENTS, CHAIN_KEY).rows_checked == 1
    finally:
        engine.dispose()
