"""DurableWriter: records committed before record() returns, spooled (fsync'd) when the database is
unreachable, replayed exactly once when it is back, 503-worthy RecordUnavailable when neither works,
and a drained queue on stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine

from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import UNREACHABLE_PG, count_rows, stored_rows, until
from service.db.audit import verify
from service.db.session import make_engine
from service.db.spool import Spool
from service.db.writer import DurableWriter
from service.records import RecordUnavailable


def test_records_are_committed_before_record_returns(engine: Engine, tmp_path: Path, record_factory) -> None:
    records = [record_factory() for _ in range(20)]

    async def scenario() -> None:
        writer = DurableWriter(engine, tmp_path / "spool", batch_size=8, chain_key=CHAIN_KEY)
        await writer.start()
        assert await writer.ready()
        # Concurrent callers end up batched together; each still waits for its own commit.
        await asyncio.gather(*(writer.record([r]) for r in records[:10]))
        await writer.record(records[10:])
        assert len(stored_rows(engine)) == 20
        await writer.stop()

    asyncio.run(scenario())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok
    assert not Spool(tmp_path / "spool").has_files()


def test_unreachable_database_spools_then_replays_once(
    tmp_path: Path, sqlite_url: str, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    records = [record_factory() for _ in range(6)]
    down = make_engine(UNREACHABLE_PG)

    async def while_down() -> None:
        writer = DurableWriter(down, spool_dir, chain_key=CHAIN_KEY)
        await writer.start()
        for record in records:
            await writer.record([record])  # answered: on the spool, fsync'd
        await writer.stop()

    asyncio.run(while_down())
    down.dispose()
    assert Spool(spool_dir).backlog() == 6

    engine = make_engine(sqlite_url)

    async def back_up() -> None:
        # One row already made it before the outage: replay must not duplicate it.
        writer = DurableWriter(engine, spool_dir, retry_interval_s=0.05, chain_key=CHAIN_KEY)
        await writer.start()
        await writer.record([records[0]])
        await until(lambda: not Spool(spool_dir).has_files())
        await writer.stop()

    asyncio.run(back_up())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok
    engine.dispose()


def test_neither_database_nor_spool_raises_record_unavailable(tmp_path: Path, record_factory) -> None:
    not_a_directory = tmp_path / "spool"
    not_a_directory.write_text("a file where the spool directory should be")
    down = make_engine(UNREACHABLE_PG)

    async def scenario() -> None:
        writer = DurableWriter(down, not_a_directory, chain_key=CHAIN_KEY)
        await writer.start()
        assert not await writer.ready()
        with pytest.raises(RecordUnavailable):
            await writer.record([record_factory()])
        await writer.stop()

    asyncio.run(scenario())
    down.dispose()


def test_record_after_stop_is_refused(engine: Engine, tmp_path: Path, record_factory) -> None:
    async def scenario() -> None:
        writer = DurableWriter(engine, tmp_path / "spool", chain_key=CHAIN_KEY)
        await writer.start()
        await writer.stop()
        with pytest.raises(RecordUnavailable):
            await writer.record([record_factory()])

    asyncio.run(scenario())


def test_stop_drains_the_queue(engine: Engine, tmp_path: Path, record_factory) -> None:
    records = [record_factory() for _ in range(50)]

    async def scenario() -> None:
        writer = DurableWriter(engine, tmp_path / "spool", batch_size=4, chain_key=CHAIN_KEY)
        await writer.start()
        pending = [asyncio.create_task(writer.record([r])) for r in records]
        await asyncio.sleep(0)  # every record is queued, few are written
        await writer.stop()
        await asyncio.gather(*pending)

    asyncio.run(scenario())
    assert count_rows(engine) == 50


def test_postgresql_outage_loses_and_duplicates_nothing(pg_cluster, tmp_path: Path, record_factory) -> None:
    """A real PostgreSQL stopped and restarted while records keep coming."""
    from service.db.migrate import upgrade

    upgrade(pg_cluster.url)
    engine = make_engine(pg_cluster.url)
    before = count_rows(engine)
    spool_dir = tmp_path / "spool"
    answered = []

    async def scenario() -> None:
        writer = DurableWriter(engine, spool_dir, retry_interval_s=0.2, chain_key=CHAIN_KEY)
        await writer.start()
        for phase in ("up", "down", "up again"):
            if phase == "down":
                await asyncio.to_thread(pg_cluster.stop)
            elif phase == "up again":
                await asyncio.to_thread(pg_cluster.start)
            for _ in range(15):
                record = record_factory()
                await writer.record([record])
                answered.append(record)
                await asyncio.sleep(0.01)
            if phase == "down":
                assert Spool(spool_dir).backlog() > 0
        await until(lambda: not Spool(spool_dir).has_files(), timeout=30)
        await writer.stop()

    try:
        asyncio.run(scenario())
    finally:
        if not _accepting(pg_cluster):
            pg_cluster.start()
    stored = stored_rows(engine)
    assert len(stored) - before == len(answered) == 45
    assert all(stored[str(r["id"])] == r["input_sha256"] for r in answered)
    assert verify(engine, key=CHAIN_KEY).ok
    engine.dispose()


def _accepting(cluster) -> bool:
    engine = make_engine(cluster.url)
    try:
        with engine.connect():
            return True
    except Exception:
        return False
    finally:
        engine.dispose()
