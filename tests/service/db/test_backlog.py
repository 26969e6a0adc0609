"""The spool backlog is a count kept up to date, not a pass over the spool per batch (issue 23, case 10:
with 150k rows spooled, every batch re-read 133 MB). What it reports stays right: the files found at
start, this process's appends, a file another process leaves later (noticed on the idle probe), and
nothing once replayed. docs/BENCHMARKS.md ("Outage replay") measures what it saves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import Engine

import service.db.backlog as backlog_module
from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import UNREACHABLE_PG, count_rows, until
from service.db.observer import NullObserver
from service.db.rows import normalise_row, row_to_json
from service.db.session import make_engine
from service.db.spool_first import SpoolFirstWriter
from service.db.writer import DurableWriter


class Reported(NullObserver):
    def __init__(self) -> None:
        self.backlog: list[int] = []

    def spool_backlog(self, rows: int) -> None:
        self.backlog.append(rows)


def crashed_worker_file(spool_dir: Path, name: str, records) -> None:
    (spool_dir / name).write_text("".join(row_to_json(normalise_row(r)) + "\n" for r in records))


def test_the_backlog_is_counted_once_then_kept_up_to_date(
    engine: Engine, tmp_path: Path, record_factory, monkeypatch
) -> None:
    reads: list[int] = []
    real_count = backlog_module._count_lines

    def counted(fd: int, offset: int) -> tuple[int, int]:
        reads.append(offset)
        return real_count(fd, offset)

    monkeypatch.setattr(backlog_module, "_count_lines", counted)  # a spy: it counts, the real one counts
    down = make_engine(UNREACHABLE_PG)
    spool_dirs = {DurableWriter: tmp_path / "database-ack", SpoolFirstWriter: tmp_path / "spool-ack"}

    async def while_down(writer_class, spool_dir: Path) -> None:
        spool_dir.mkdir()
        crashed_worker_file(spool_dir, "spool-1-crashed.jsonl", [record_factory() for _ in range(100)])
        reported = Reported()
        writer = writer_class(down, spool_dir, observer=reported, retry_interval_s=0.2, chain_key=CHAIN_KEY)
        reads.clear()
        await writer.start()
        assert reported.backlog[-1] == 100 and len(reads) == 1  # counted once, at start
        for _ in range(20):
            await writer.record([record_factory()])
        # The spool-first writer's rows join the backlog once their insert has failed.
        await until(lambda: reported.backlog[-1] == 120)
        assert len(reads) == 1  # 20 batches, and the spool was not read again
        crashed_worker_file(spool_dir, "spool-2-crashed.jsonl", [record_factory() for _ in range(7)])
        await until(lambda: reported.backlog[-1] == 127)  # another process's file: the idle probe
        assert len(reads) == 2  # only the new file was read
        await writer.stop()

    for writer_class, spool_dir in spool_dirs.items():
        asyncio.run(while_down(writer_class, spool_dir))
    down.dispose()

    async def back_up(spool_dir: Path) -> None:
        reported = Reported()
        writer = DurableWriter(
            engine, spool_dir, observer=reported, retry_interval_s=0.05, chain_key=CHAIN_KEY
        )
        await writer.start()
        assert reported.backlog[-1] == 127
        await until(lambda: reported.backlog[-1] == 0)
        await writer.stop()

    for spool_dir in spool_dirs.values():
        asyncio.run(back_up(spool_dir))
    assert count_rows(engine) == 254
