"""Writer tasks are supervised (issue 23, case 3): a task that fails for real (fault injection: a step of
it raises an exception nobody expected, once) is logged with its traceback, counted, reported by
readiness while it is down, and restarted; requests it held get an answer (503), never a hang; the
rows after it are recorded. Before, the task died silently and readiness stayed true."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine

import service.db.store as store_module
from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import count_rows, stored_rows, until
from service.api import health
from service.db.audit import verify
from service.db.journal import Journal
from service.db.observer import MetricsObserver
from service.db.rows import normalise_row, row_to_json
from service.db.spool_first import SpoolFirstWriter
from service.db.writer import DurableWriter
from service.problems import Problem
from service.records import RecordUnavailable

# Long enough to see the task down, short enough for a quick test.
BACKOFF_S = 1.0


def restarts(task: str) -> float:
    return REGISTRY.get_sample_value("kdoct_record_writer_restarts_total", {"task": task}) or 0.0


def fails_once(monkeypatch, owner, name: str, when=lambda *args, **kwargs: True) -> list[int]:
    """Make `owner.name` raise RuntimeError the first time `when(...)` holds; returns a list that gets
    one item when it did."""
    real = getattr(owner, name)
    fired: list[int] = []

    def faulty(*args, **kwargs):
        if not fired and when(*args, **kwargs):
            fired.append(1)
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, faulty)
    return fired


async def until_ready(writer, ready: bool, timeout: float) -> None:
    """Until the writer's readiness (what /health/ready asks) is `ready`; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while await writer.ready() is not ready:
        assert time.monotonic() < deadline, f"writer readiness never became {ready}"
        await asyncio.sleep(0.02)


async def readiness_refusal(writer) -> Problem:
    """What GET /health/ready answers (its handler, on an app whose models are ready) while not ready."""
    state = SimpleNamespace(ready=True, sink=writer)  # what the handler reads of the AppState
    with pytest.raises(Problem) as refused:
        await health.ready(state)
    return refused.value


def crash_logged(caplog, task: str) -> bool:
    return any(
        record.levelno == logging.ERROR and record.exc_info and repr(task) in record.getMessage()
        for record in caplog.records
    )


def test_insert_task_failure_is_logged_reported_and_restarted(
    engine: Engine, tmp_path: Path, record_factory, monkeypatch, caplog
) -> None:
    """KDOCT_RECORD_ACK=spool: the insert task's transaction fails with a non-database exception."""
    fired = fails_once(monkeypatch, store_module, "append_predictions")
    records = [record_factory() for _ in range(6)]
    before = restarts("insert")

    async def scenario() -> None:
        writer = SpoolFirstWriter(
            engine, tmp_path / "spool", observer=MetricsObserver(), restart_backoff_s=BACKOFF_S,
            retry_interval_s=0.05, coalesce_s=0.01, chain_key=CHAIN_KEY,
        )  # fmt: skip
        await writer.start()
        await asyncio.gather(*(writer.record([r]) for r in records[:3]))  # journaled: answered
        await until(lambda: bool(fired))
        await until_ready(writer, False, timeout=5)  # down: not ready, and saying which task
        assert writer.not_running == ["insert"]
        refusal = await readiness_refusal(writer)
        assert refusal.status == 503 and "task insert restarting" in refusal.detail, refusal.detail
        await until_ready(writer, True, timeout=10)
        assert writer.not_running == []
        await asyncio.gather(*(writer.record([r]) for r in records[3:]))
        # The rows the failed insert held were left for replay; the later ones are inserted live.
        await until(lambda: count_rows(engine) == 6)
        await writer.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok
    assert restarts("insert") - before == 1
    assert crash_logged(caplog, "insert")


def test_writer_task_failure_in_replay_is_restarted_and_records_keep_being_committed(
    engine: Engine, tmp_path: Path, record_factory, monkeypatch, caplog
) -> None:
    """KDOCT_RECORD_ACK=database: the writer task fails while replaying a spool file. Before, the task
    was dead and every request after it got 503."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    spooled = [record_factory() for _ in range(4)]
    (spool_dir / "spool-1-crashed.jsonl").write_text(
        "".join(row_to_json(normalise_row(r)) + "\n" for r in spooled)
    )
    # Replays look stored ids up (new_ids=False); live inserts do not.
    fired = fails_once(
        monkeypatch, store_module, "append_predictions", lambda *a, new_ids=False, **_: not new_ids
    )
    live = [record_factory() for _ in range(5)]
    before = restarts("writer")

    async def scenario() -> None:
        writer = DurableWriter(
            engine,
            spool_dir,
            observer=MetricsObserver(),
            restart_backoff_s=BACKOFF_S,
            retry_interval_s=0.05,
            chain_key=CHAIN_KEY,
        )
        await writer.start()
        await until(lambda: bool(fired))
        await until_ready(writer, False, timeout=5)
        assert writer.not_running == ["writer"]
        for record in live:  # taken once the task is back (within the backoff)
            await asyncio.wait_for(writer.record([record]), 10)
        await until(lambda: count_rows(engine) == 9)
        assert await writer.ready()
        await writer.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert set(stored_rows(engine)) == {str(r["id"]) for r in spooled + live}
    assert verify(engine, key=CHAIN_KEY).ok
    assert restarts("writer") - before == 1
    assert crash_logged(caplog, "writer")


@pytest.mark.parametrize("step", ["journal", "hand-over"])
def test_requests_held_by_a_failing_journal_task_are_answered_never_left_hanging(
    step: str, engine: Engine, tmp_path: Path, record_factory, monkeypatch
) -> None:
    """The journal task fails while requests wait on it: before the rows are journaled (they get
    RecordUnavailable, a 503), or after (answered; their rows still reach the database). Before, the
    task died and those requests waited forever."""
    if step == "journal":
        fails_once(monkeypatch, Journal, "append")
    else:
        fails_once(monkeypatch, SpoolFirstWriter, "_hand_over")
    records = [record_factory() for _ in range(8)]

    async def scenario() -> list:
        writer = SpoolFirstWriter(
            engine, tmp_path / "spool", restart_backoff_s=0.05, retry_interval_s=0.05, chain_key=CHAIN_KEY
        )
        await writer.start()
        first = await asyncio.wait_for(
            asyncio.gather(*(writer.record([r]) for r in records[:4]), return_exceptions=True), 10
        )
        await asyncio.wait_for(asyncio.gather(*(writer.record([r]) for r in records[4:])), 10)
        assert await writer.flush(10)
        await until(lambda: {str(r["id"]) for r in records[4:]} <= set(stored_rows(engine)))
        if step == "hand-over":  # answered rows left for replay: inserted once the replay runs
            await until(lambda: count_rows(engine) == 8)
        await writer.stop()
        return first

    outcomes = asyncio.run(scenario())
    stored = set(stored_rows(engine))
    for record, outcome in zip(records[:4], outcomes, strict=True):
        if outcome is None:
            assert str(record["id"]) in stored  # answered: on record
        else:
            assert isinstance(outcome, RecordUnavailable), outcome
    if step == "journal":
        assert any(isinstance(o, RecordUnavailable) for o in outcomes)
    else:
        assert outcomes == [None] * 4
    assert verify(engine, key=CHAIN_KEY).ok
