"""The hash chain: ordered appends, idempotent re-appends, several writer processes at once, the
append-only triggers, and audit verify finding a row altered behind its back."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from kdoct_testing.chain import CHAIN_KEY, append_unkeyed
from service.db.audit import verify
from service.db.chain import GENESIS_HASH, append_predictions
from service.db.migrate import upgrade
from service.db.rows import LATER_FIELDS, normalise_row
from service.db.session import make_engine
from service.db.tables import Prediction


def _sequences(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Prediction.sequence).order_by(Prediction.sequence)))


def test_append_chains_rows_in_order(engine: Engine, record_factory) -> None:
    rows = [normalise_row(record_factory()) for _ in range(5)]
    assert append_predictions(engine, rows[:2], key=CHAIN_KEY).count == 2
    assert append_predictions(engine, rows[2:], key=CHAIN_KEY).count == 3
    with Session(engine) as session:
        stored = session.scalars(select(Prediction).order_by(Prediction.sequence)).all()
    assert [p.id for p in stored] == [r["id"] for r in rows]
    assert stored[0].prev_hash == GENESIS_HASH
    assert all(
        later.prev_hash == earlier.row_hash for earlier, later in zip(stored, stored[1:], strict=False)
    )
    report = verify(engine, key=CHAIN_KEY)
    assert report.ok and report.rows_checked == 5


def test_reappending_stored_rows_inserts_nothing(engine: Engine, record_factory) -> None:
    rows = [normalise_row(record_factory()) for _ in range(3)]
    append_predictions(engine, rows[:2], key=CHAIN_KEY)
    assert append_predictions(engine, rows + rows, key=CHAIN_KEY).count == 1
    assert _sequences(engine) == [1, 2, 3]
    assert verify(engine, key=CHAIN_KEY).ok


def _append_many(url: str, batches: int, make_rows) -> None:
    engine = make_engine(url)
    for _ in range(batches):
        append_predictions(engine, make_rows(2), key=CHAIN_KEY)
    engine.dispose()


def test_concurrent_writer_processes_keep_the_chain(db_url: str, engine: Engine, make_rows) -> None:
    processes, batches = 3, 12
    # fork: the children start at once and need nothing pickled; each opens its own engine.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_append_many, args=(db_url, batches, make_rows)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert _sequences(engine) == list(range(1, processes * batches * 2 + 1))
    report = verify(engine, key=CHAIN_KEY)
    assert report.ok, report.broken


@pytest.mark.parametrize("statement", ["UPDATE predictions SET label = 'cnv'", "DELETE FROM predictions"])
def test_update_and_delete_are_refused(engine: Engine, record_factory, statement: str) -> None:
    append_predictions(engine, [normalise_row(record_factory())], key=CHAIN_KEY)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)) == 1


def test_truncate_is_refused_on_postgresql(pg_url: str, record_factory) -> None:
    engine = make_engine(pg_url)
    append_predictions(engine, [normalise_row(record_factory())], key=CHAIN_KEY)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE predictions CASCADE"))
    engine.dispose()


def _behind_its_back(engine: Engine, statement: str) -> None:
    """What a superuser could do: switch the append-only triggers off, change a row, switch them on."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE predictions DISABLE TRIGGER USER"))
            conn.execute(text(statement))
            conn.execute(text("ALTER TABLE predictions ENABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER predictions_no_update"))
            conn.execute(text("DROP TRIGGER predictions_no_delete"))
            conn.execute(text(statement))


def test_audit_finds_an_altered_row(engine: Engine, make_rows) -> None:
    append_predictions(engine, make_rows(6), key=CHAIN_KEY)
    assert verify(engine, key=CHAIN_KEY).ok
    _behind_its_back(engine, "UPDATE predictions SET label = 'cnv', confidence = 0.99 WHERE sequence = 4")
    report = verify(engine, key=CHAIN_KEY)
    assert not report.ok
    assert report.broken.sequence == 4
    assert "altered" in report.broken.reason
    assert report.rows_checked == 3


def test_audit_finds_a_removed_row(engine: Engine, make_rows) -> None:
    append_predictions(engine, make_rows(5), key=CHAIN_KEY)
    _behind_its_back(engine, "DELETE FROM predictions WHERE sequence = 2")
    report = verify(engine, key=CHAIN_KEY)
    assert report.broken is not None and report.broken.sequence == 3
    assert "missing" in report.broken.reason


def test_audit_finds_a_rehashed_row(engine: Engine, make_rows) -> None:
    """Someone who alters a row and recomputes its own hash still breaks the next link."""
    append_predictions(engine, make_rows(3), key=CHAIN_KEY)
    _behind_its_back(engine, "UPDATE predictions SET row_hash = '" + "f" * 64 + "' WHERE sequence = 2")
    report = verify(engine, key=CHAIN_KEY)
    assert report.broken is not None and report.broken.sequence == 2


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0004(request, tmp_path) -> str:
    """A database migrated to revision 0004: the schema before the safety gate's columns."""
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_fresh_url")
    )
    upgrade(url, "0004")
    return url


def test_gate_verdicts_are_chained_and_rows_from_before_them_still_verify(
    url_at_0004, record_factory
) -> None:
    engine = make_engine(url_at_0004)
    try:
        # Rows as revision 0004 wrote them: no gate keys at all.
        old = [normalise_row(record_factory()) for _ in range(3)]
        for row in old:
            for name in LATER_FIELDS:
                del row[name]
        append_unkeyed(engine, old)  # as the service wrote them then: unkeyed links
        upgrade(url_at_0004)
        assert verify(engine, key=CHAIN_KEY).ok
        flagged = normalise_row(record_factory(gradable=False, gate_reason="quality:blank", ood_score=3.25))
        graded = normalise_row(record_factory(gradable=True, gate_reason=None, ood_score=0.5))
        append_predictions(engine, [flagged, graded], key=CHAIN_KEY)
        report = verify(engine, key=CHAIN_KEY)
        assert report.ok and report.rows_checked == 5
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT gradable, gate_reason, ood_score FROM predictions WHERE sequence = 4")
            )
            assert tuple(stored.one()) == (False, "quality:blank", 3.25)
        # Turning an ungradable answer into a gradable one behind the triggers breaks its link.
        _behind_its_back(
            engine, "UPDATE predictions SET gradable = TRUE, gate_reason = NULL WHERE sequence = 4"
        )
        report = verify(engine, key=CHAIN_KEY)
        assert not report.ok and report.broken.sequence == 4 and "altered" in report.broken.reason
    finally:
        engine.dispose()
