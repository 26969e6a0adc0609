"""Spool files with bad lines in them (issue 23, case 3): replay reads them as bytes, sets each bad line
aside in the spool's quarantine (kept as it was, counted in kdoct_spool_quarantined_total, logged at
ERROR by file name), and inserts every good row: before the bad lines, after them, and in other files.
Before, one undecodable line killed the writer task silently."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy.exc import DataError

import service.db.store as store_module
from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import spool_line, stored_rows, until
from service.db.audit import verify
from service.db.observer import MetricsObserver
from service.db.spool_first import SpoolFirstWriter
from service.db.writer import DurableWriter

WRITERS = {"database-ack": DurableWriter, "spool-ack": SpoolFirstWriter}


def quarantined(reason: str) -> float:
    return REGISTRY.get_sample_value("kdoct_spool_quarantined_total", {"reason": reason}) or 0.0


line = spool_line


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("spool-*.jsonl"))


async def replayed_by(writer_class, engine: Engine, spool_dir: Path, wanted: set[str]) -> None:
    """Start a writer on the spool dir (as a restarted service does), wait until `wanted` are stored and
    the spool files are gone, then stop it."""
    writer = writer_class(
        engine, spool_dir, retry_interval_s=0.05, observer=MetricsObserver(), chain_key=CHAIN_KEY
    )
    await writer.start()
    try:
        await until(lambda: wanted <= set(stored_rows(engine)) and not spool_files(spool_dir), timeout=20)
        assert await writer.ready()
        assert writer.not_running == []
    finally:
        await writer.stop()


@pytest.mark.parametrize("writer_class", WRITERS.values(), ids=WRITERS.keys())
def test_bad_lines_are_set_aside_and_every_good_row_around_them_is_replayed(
    writer_class, engine: Engine, tmp_path: Path, record_factory, caplog
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = [record_factory() for _ in range(7)]
    bad_lines = [
        b'\xff\xfe{"label": "garbage"}\n',  # not UTF-8: the line of issue 23, case 3
        b'{"id": "half a row\n',  # not JSON
        b'{"id": "not-a-uuid", "label": "garbage"}\n',  # JSON, not a row
        b"[1, 2, 3]\n",  # JSON, not an object
        line(record_factory(label="x" * 33)),  # longer than the column
        line(record_factory(confidence=float("nan"))).replace(b"NaN", b"Infinity"),  # not JSON (RFC 8259)
    ]
    first = spool_dir / "spool-1-crashed.jsonl"
    first.write_bytes(
        line(good[0]) + bad_lines[0] + line(good[1]) + b"".join(bad_lines[1:4]) + line(good[2])
        + bad_lines[4] + bad_lines[5] + line(good[3])
    )  # fmt: skip
    torn = b'{"created_at": "2026-'  # the last line, cut short by a crash
    second = spool_dir / "spool-2-crashed.jsonl"
    second.write_bytes(line(good[4]) + line(good[5]) + line(good[6]) + torn)
    before = {
        reason: quarantined(reason) for reason in ("undecodable", "not_json", "not_a_row", "incomplete")
    }

    with caplog.at_level(logging.INFO):
        asyncio.run(replayed_by(writer_class, engine, spool_dir, {str(r["id"]) for r in good}))

    assert stored_rows(engine) == {str(r["id"]): r["input_sha256"] for r in good}
    assert verify(engine, key=CHAIN_KEY).ok
    quarantine = spool_dir / "quarantine"
    assert (quarantine / f"{first.name}.bad-lines").read_bytes() == b"".join(bad_lines)
    assert (quarantine / f"{second.name}.bad-lines").read_bytes() == torn + b"\n"
    after = {reason: quarantined(reason) - count for reason, count in before.items()}
    assert after == {"undecodable": 1, "not_json": 2, "not_a_row": 3, "incomplete": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(first.name in message and "6 line(s)" in message for message in errors), errors
    assert "garbage" not in caplog.text  # a file name and line numbers, never a line's content


def test_a_file_that_cannot_be_read_is_moved_aside_whole(
    engine: Engine, tmp_path: Path, record_factory
) -> None:
    spool_dir = tmp_path / "spool"
    (spool_dir / "spool-3-odd.jsonl").mkdir(
        parents=True
    )  # opening it for reading fails (EISDIR), even as root
    good = [record_factory() for _ in range(3)]
    (spool_dir / "spool-4-crashed.jsonl").write_bytes(b"".join(line(r) for r in good))
    before = quarantined("unreadable_file")

    asyncio.run(replayed_by(DurableWriter, engine, spool_dir, {str(r["id"]) for r in good}))

    assert set(stored_rows(engine)) == {str(r["id"]) for r in good}
    assert (spool_dir / "quarantine" / "spool-3-odd.jsonl").is_dir()
    assert quarantined("unreadable_file") - before == 1


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_go_in(
    engine: Engine, tmp_path: Path, record_factory, monkeypatch
) -> None:
    """Fault injection: the database refuses one row that passed every check (DataError, as for a value
    its column cannot hold). The replay halves its chunk until that row is alone, sets it aside, and
    inserts the others."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    records = [record_factory() for _ in range(9)]
    refused = records[5]
    spooled = spool_dir / "spool-5-crashed.jsonl"
    spooled.write_bytes(b"".join(line(r) for r in records))
    real_append = store_module.append_predictions

    def database_refusing_one_row(engine, rows, **kwargs):
        if any(row["id"] == refused["id"] for row in rows):
            raise DataError("INSERT INTO predictions ...", {}, Exception("value out of range"))
        return real_append(engine, rows, **kwargs)

    monkeypatch.setattr(store_module, "append_predictions", database_refusing_one_row)
    before = quarantined("refused")
    wanted = {str(r["id"]) for r in records if r is not refused}

    asyncio.run(replayed_by(DurableWriter, engine, spool_dir, wanted))

    assert set(stored_rows(engine)) == wanted
    assert verify(engine, key=CHAIN_KEY).ok
    assert (spool_dir / "quarantine" / f"{spooled.name}.bad-lines").read_bytes() == line(refused)
    assert quarantined("refused") - before == 1


def test_a_replay_that_fails_half_way_counts_each_bad_line_once(
    sqlite_url: str, tmp_path: Path, record_factory
) -> None:
    """The database goes away while a file is replayed: the file stays whole, nothing is counted; the
    replay done again later sets the bad line aside once."""
    from kdoct_testing.records import UNREACHABLE_PG
    from service.db.session import make_engine

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    records = [record_factory() for _ in range(3)]
    spooled = spool_dir / "spool-6-crashed.jsonl"
    content = line(records[0]) + b"\xff\n" + line(records[1]) + line(records[2])
    spooled.write_bytes(content)
    before = quarantined("undecodable")
    down = make_engine(UNREACHABLE_PG)

    async def while_down() -> None:
        writer = DurableWriter(
            down, spool_dir, retry_interval_s=0.05, observer=MetricsObserver(), chain_key=CHAIN_KEY
        )
        await writer.start()  # the file is there: it tries to replay it at once, and the insert fails
        await until(lambda: writer.degraded)
        await writer.stop()

    asyncio.run(while_down())
    down.dispose()
    assert spooled.read_bytes() == content
    quarantine = spool_dir / "quarantine"
    assert not quarantine.exists() or not any(quarantine.iterdir())
    assert quarantined("undecodable") == before

    engine = make_engine(sqlite_url)
    asyncio.run(replayed_by(DurableWriter, engine, spool_dir, {str(r["id"]) for r in records}))
    assert quarantined("undecodable") - before == 1
    assert (spool_dir / "quarantine" / f"{spooled.name}.bad-lines").read_bytes() == b"\xff\n"
    engine.dispose()


def test_files_the_spool_creates_are_private(tmp_path: Path, sqlite_url: str, record_factory) -> None:
    """Spool directory and quarantine 0700, spool files, journal segments and quarantined lines 0600,
    whatever the umask lets through (issue 23, case 14: they were 0644)."""
    from kdoct_testing.records import UNREACHABLE_PG
    from service.db.session import make_engine

    spool_dir = tmp_path / "var" / "spool"
    previous = os.umask(0o022)
    try:
        down = make_engine(UNREACHABLE_PG)

        async def while_down() -> None:
            for writer_class in (DurableWriter, SpoolFirstWriter):
                writer = writer_class(down, spool_dir, chain_key=CHAIN_KEY)
                await writer.start()
                await writer.record([record_factory()])
                modes = {path.name: path.stat().st_mode & 0o777 for path in spool_files(spool_dir)}
                await writer.stop()
                assert modes and set(modes.values()) == {0o600}, modes

        asyncio.run(while_down())
        down.dispose()
        with (spool_dir / "spool-7-crashed.jsonl").open("wb") as handle:
            handle.write(line(record_factory()) + b"\xff\n")
        engine = make_engine(sqlite_url)
        asyncio.run(replayed_by(DurableWriter, engine, spool_dir, set()))
        engine.dispose()
    finally:
        os.umask(previous)
    quarantine = spool_dir / "quarantine"
    assert spool_dir.stat().st_mode & 0o777 == 0o700
    assert quarantine.stat().st_mode & 0o777 == 0o700
    assert [path.stat().st_mode & 0o777 for path in quarantine.iterdir()] == [0o600]
