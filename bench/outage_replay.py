"""The record path during a database outage, with and without a spool backlog (issue 23, case 10).

    python -m bench.outage_replay [--seconds 10] [--backlog 150000] [--concurrency 8] [--write-docs]

The service's own record writers (service/db/spool_first.py for KDOCT_RECORD_ACK=spool,
service/db/writer.py for =database), in this process, on an engine whose PostgreSQL is unreachable
(nothing listens on 127.0.0.1:1: every connection is refused at once), so every answered row goes to the
local spool. `concurrency` coroutines each await `record()` of one prediction row in a loop, as requests
awaiting their record do. Measured per writer: records per second and the wait of each `record()`
(p50, p99), (a) on an empty spool directory, (b) on one already holding `backlog` rows in spool files
that crashed workers left (4 MiB journal segments, as they leave them). Target: (b) within 20 % of (a),
throughput and p50. Before the backlog became a count (service/db/backlog.py), every batch re-read
every spool file to report it.

Only the writers' constructors, record(), start() and stop() and the Journal are used, so the same
script measures an older commit's writers too (run it from that checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.chain_writers import bench_row
from bench.report import machine, markdown_table, now, write_section

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
TARGET = 0.8  # (b) keeps at least 80 % of (a)'s throughput, and its p50 is at most 1/0.8 of (a)'s
HEADING = "## Outage replay: the record path with PostgreSQL unreachable and a spool backlog"


def make_backlog(directory: Path, rows: int) -> int:
    """`rows` rows in spool files as workers that crashed during an outage leave them; returns bytes."""
    from service.db.journal import Journal
    from service.db.rows import normalise_row

    journal = Journal(directory)
    for start in range(0, rows, 500):
        journal.append([normalise_row(bench_row()) for _ in range(min(500, rows - start))])
    journal.close()  # nothing settled: every segment is closed and left for replay
    return sum(path.stat().st_size for path in directory.glob("spool-*.jsonl"))


async def _measure(writer_class, spool_dir: Path, concurrency: int, seconds: float) -> dict:
    from service.audit_key import AuditKey
    from service.db.session import make_engine

    engine = make_engine(UNREACHABLE_PG)
    # Any audit key: the database is unreachable, nothing is chained.
    writer = writer_class(engine, spool_dir, chain_key=AuditKey(os.urandom(32)))
    await writer.start()
    waits: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            row = bench_row()
            began = time.perf_counter()
            await writer.record([row])
            waits.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await writer.stop()
    engine.dispose()
    waits.sort()
    return {
        "records_per_s": len(waits) / elapsed,
        "p50_ms": statistics.median(waits) * 1e3,
        "p99_ms": waits[int(0.99 * (len(waits) - 1))] * 1e3,
    }


def measure(backlog: int, concurrency: int, seconds: float) -> tuple[list[dict], int]:
    """Each writer on an empty spool, then on a copy of one holding `backlog` rows."""
    from service.db.spool_first import SpoolFirstWriter
    from service.db.writer import DurableWriter

    results = []
    with tempfile.TemporaryDirectory(prefix="kdoct-outage-") as root:
        template = Path(root) / "backlog"
        size = make_backlog(template, backlog)
        for ack, writer_class in (("spool", SpoolFirstWriter), ("database", DurableWriter)):
            for rows in (0, backlog):
                spool_dir = Path(root) / f"{ack}-{rows}"
                if rows:
                    shutil.copytree(template, spool_dir)
                figures = asyncio.run(_measure(writer_class, spool_dir, concurrency, seconds))
                results.append({"ack": ack, "backlog": rows, **figures})
                print(results[-1], flush=True)
                shutil.rmtree(spool_dir, ignore_errors=True)
    return results, size


def report(results: list[dict], size: int, command: str, concurrency: int, seconds: float) -> str:
    rows, verdicts = [], []
    for ack in ("spool", "database"):
        empty, full = (r for r in results if r["ack"] == ack)
        throughput, p50 = full["records_per_s"] / empty["records_per_s"], full["p50_ms"] / empty["p50_ms"]
        met = throughput >= TARGET and p50 <= 1 / TARGET
        verdicts.append(met)
        for figures in (empty, full):
            rows.append(
                [
                    f"`{ack}`",
                    f"{figures['backlog']:,}",
                    f"{figures['records_per_s']:.0f}",
                    f"{figures['p50_ms']:.2f}",
                    f"{figures['p99_ms']:.2f}",
                    f"x{throughput:.2f} / x{p50:.2f}" if figures is full else "",
                ]
            )
    header = ["KDOCT_RECORD_ACK", "rows spooled before", "records/s", "record() p50 (ms)", "p99 (ms)",
              "backlog / none: records/s, p50"]  # fmt: skip
    verdict = "met" if all(verdicts) else "NOT met"
    return (
        f"{HEADING}\n\nMeasured {now()} on {machine()}: `{command.strip()}`. The service's record writers "
        f"in one process, PostgreSQL unreachable (connections refused), {concurrency} requests in flight, "
        f"{seconds:g} s per row; the backlog is {size / 1e6:.0f} MB of spool files left by crashed "
        f"workers. Target: with the backlog, throughput and p50 within 20 % of no backlog: "
        f"**{verdict}**.\n\n{markdown_table(header, rows)}\n"
    )


def outage_replay_text(quick: bool) -> str:
    """For `python -m bench`: the section's text (quick: 3 s per configuration instead of 10)."""
    seconds = 3.0 if quick else 10.0
    results, size = measure(150_000, 8, seconds)
    return report(results, size, f"python -m bench.outage_replay --seconds {seconds:g}", 8, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outage_replay", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=150_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--write-docs", action="store_true", help="put the section in docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    results, size = measure(args.backlog, args.concurrency, args.seconds)
    command = "python -m bench.outage_replay " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = report(results, size, command.replace(" --write-docs", ""), args.concurrency, args.seconds)
    print(text)
    if args.write_docs:
        write_section("outage", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
