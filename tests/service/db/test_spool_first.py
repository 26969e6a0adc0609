"""SpoolFirstWriter (KDOCT_RECORD_ACK=spool): record() returns once the rows are fsync'd to the journal,
even while the database is stalled; the insert follows; each row reaches the database exactly once
whether the process lives, stops, or is killed between the fsync and the commit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import Engine, text

from kdoct_testing.chain import CHAIN_KEY, CHAIN_SECRET
from kdoct_testing.records import UNREACHABLE_PG, count_rows, stored_rows, until
from service.db.audit import verify
from service.db.journal import Journal
from service.db.session import make_engine
from service.db.spool import Spool
from service.db.spool_first import SpoolFirstWriter

REPO = Path(__file__).resolve().parents[3]


def _journal_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("spool-*.jsonl"))


def test_rows_reach_the_database_once_and_the_journal_is_let_go(
    engine: Engine, tmp_path: Path, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    records = [record_factory() for _ in range(60)]

    async def scenario() -> None:
        # Small segments: several are sealed, and each is unlinked once its rows are committed.
        writer = SpoolFirstWriter(engine, spool_dir, batch_size=8, segment_bytes=4096, chain_key=CHAIN_KEY)
        await writer.start()
        await asyncio.gather(*(writer.record([r]) for r in records[:40]))
        await writer.record(records[40:])
        assert await writer.flush(10)
        assert len(stored_rows(engine)) == 60
        # Only the segment still being appended to may remain while the writer runs.
        assert len(_journal_files(spool_dir)) <= 1
        await writer.stop()

    asyncio.run(scenario())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok
    assert _journal_files(spool_dir) == []


def test_answers_do_not_wait_for_a_stalled_database(pg_url: str, tmp_path: Path, record_factory) -> None:
    """A lock held on the predictions table stalls every insert; record() returns all the same, once the
    rows are on the journal, and the rows are committed after the lock is released."""
    engine = make_engine(pg_url)
    spool_dir = tmp_path / "spool"
    records = [record_factory() for _ in range(10)]
    blocker = make_engine(pg_url)

    async def scenario() -> None:
        writer = SpoolFirstWriter(engine, spool_dir, batch_size=4, chain_key=CHAIN_KEY)
        await writer.start()
        with blocker.connect() as conn:
            conn.execute(text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
            for record in records:
                began = time.monotonic()
                await writer.record([record])
                # Safety bound with a wide margin: a commit would wait for the lock (seconds).
                assert time.monotonic() - began < 1.0
            assert Spool(spool_dir).backlog() == 10  # every answered row is on the journal
            assert not await writer.flush(0.2)  # the inserts are still waiting on the lock
            conn.rollback()
        assert await writer.flush(15)
        await writer.stop()

    try:
        asyncio.run(scenario())
    finally:
        blocker.dispose()
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok
    assert _journal_files(spool_dir) == []
    engine.dispose()


def test_unreachable_database_leaves_the_journal_for_replay(
    tmp_path: Path, sqlite_url: str, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    records = [record_factory() for _ in range(6)]
    down = make_engine(UNREACHABLE_PG)

    async def while_down() -> None:
        writer = SpoolFirstWriter(down, spool_dir, chain_key=CHAIN_KEY)
        await writer.start()
        for record in records:
            await writer.record([record])
        await writer.stop()

    asyncio.run(while_down())
    down.dispose()
    assert Spool(spool_dir).backlog() == 6

    engine = make_engine(sqlite_url)

    async def back_up() -> None:
        writer = SpoolFirstWriter(engine, spool_dir, retry_interval_s=0.05, chain_key=CHAIN_KEY)
        await writer.start()
        await until(lambda: count_rows(engine) == 6)
        await writer.stop()

    asyncio.run(back_up())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert _journal_files(spool_dir) == []
    assert verify(engine, key=CHAIN_KEY).ok
    engine.dispose()


def test_memory_cap_sends_rows_through_replay_exactly_once(
    engine: Engine, tmp_path: Path, record_factory
) -> None:
    records = [record_factory() for _ in range(30)]

    async def scenario() -> None:
        writer = SpoolFirstWriter(
            engine, tmp_path / "spool", memory_rows=2, retry_interval_s=0.05, chain_key=CHAIN_KEY
        )
        await writer.start()
        await asyncio.gather(*(writer.record([r]) for r in records))
        await until(lambda: count_rows(engine) == 30)
        await writer.stop()

    asyncio.run(scenario())
    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in records}
    assert verify(engine, key=CHAIN_KEY).ok


def test_unwritable_journal_falls_back_to_committing_first(
    engine: Engine, tmp_path: Path, record_factory
) -> None:
    not_a_directory = tmp_path / "spool"
    not_a_directory.write_text("a file where the spool directory should be")
    record = record_factory()

    async def scenario() -> None:
        writer = SpoolFirstWriter(engine, not_a_directory, chain_key=CHAIN_KEY)
        await writer.start()
        await writer.record([record])
        assert str(record["id"]) in stored_rows(engine)  # committed before record() returned
        await writer.stop()

    asyncio.run(scenario())


_KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    from conftest import make_record
    from service.audit_key import AuditKey
    from service.db.session import make_engine
    from service.db.spool_first import SpoolFirstWriter

    async def main():
        writer = SpoolFirstWriter(make_engine({url!r}), {spool!r}, batch_size=16,
                                  chain_key=AuditKey(bytes.fromhex({key!r})))
        await writer.start()
        for chunk in range(10):
            await asyncio.gather(*(writer.record([make_record()]) for _ in range(20)))
        os._exit(0)  # killed: no stop(), inserts in flight, the journal neither unlinked nor closed

    asyncio.run(main())
    """
)


def test_killed_between_fsync_and_commit_replays_each_row_once(
    db_url: str, tmp_path: Path, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    script = _KILLED_WRITER.format(
        repo=str(REPO),
        tests=str(Path(__file__).parent),
        url=db_url,
        spool=str(spool_dir),
        key=CHAIN_SECRET.hex(),
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=REPO)
    engine = make_engine(db_url)
    assert Spool(spool_dir).backlog() == 200  # every answered row is on the journal
    committed_before = count_rows(engine)
    assert committed_before <= 200

    async def restarted() -> None:
        writer = SpoolFirstWriter(engine, spool_dir, retry_interval_s=0.05, chain_key=CHAIN_KEY)
        await writer.start()
        await until(lambda: not _journal_files(spool_dir))
        await writer.stop()

    asyncio.run(restarted())
    assert count_rows(engine) == 200
    assert verify(engine, key=CHAIN_KEY).ok
    engine.dispose()


def test_journal_segments_rotate_and_are_unlinked_once_committed(tmp_path: Path, make_rows) -> None:
    journal = Journal(tmp_path, segment_bytes=1)  # every append seals its segment
    first = journal.append(make_rows(2))
    second = journal.append(make_rows(3))
    assert first.path != second.path and first.path.exists() and second.path.exists()
    journal.committed(first, 2)
    assert not first.path.exists()
    journal.leave_for_replay(second, 3)
    assert second.path.exists() and journal.rows_awaiting_replay() == 0  # closed: no longer ours
    # Closed, so another process can claim it for replay.
    with Spool(tmp_path).claim_one() as claimed:
        assert claimed is not None and claimed.path == second.path and len(claimed.rows) == 3


def test_closing_with_unsettled_rows_leaves_them_for_replay(tmp_path: Path, make_rows) -> None:
    journal = Journal(tmp_path)
    rows = make_rows(5)
    segment = journal.append(rows)
    journal.committed(segment, 2)  # three are still on their way from memory
    journal.close()
    assert segment.path.exists()
    with Spool(tmp_path).claim_one() as claimed:
        assert claimed is not None
        assert [row["id"] for row in claimed.rows] == [row["id"] for row in rows]


class _Backlog:
    """The writer's observer, keeping what it last reported as the spool backlog."""

    def __init__(self) -> None:
        self.reported: list[int] = []

    def db_write(self, seconds: float, rows: int) -> None:
        pass

    def db_failure(self) -> None:
        pass

    def spool_backlog(self, rows: int) -> None:
        self.reported.append(rows)


def test_backlog_is_what_waits_for_replay_not_a_live_journal(
    engine: Engine, tmp_path: Path, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    down = make_engine(UNREACHABLE_PG)

    async def scenario() -> None:
        # Another worker's journal, live and held: its rows are on their way, not a backlog.
        other = SpoolFirstWriter(engine, spool_dir, chain_key=CHAIN_KEY)
        await other.start()
        await other.record([record_factory() for _ in range(4)])
        assert await other.flush(10) and len(_journal_files(spool_dir)) == 1
        observed = _Backlog()
        writer = SpoolFirstWriter(down, spool_dir, observer=observed, chain_key=CHAIN_KEY)
        await writer.start()
        assert observed.reported == [0]
        # With the database down, this worker's rows wait for replay: they are the backlog.
        for _ in range(3):
            await writer.record([record_factory()])
        await until(lambda: observed.reported[-1] == 3)
        await writer.stop()
        await other.stop()

    asyncio.run(scenario())
    down.dispose()
