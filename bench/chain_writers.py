"""Write throughput of the records when several service processes (workers, replicas) share one
PostgreSQL: the hash chain serialises their appends (one advisory lock, service/db/chain.py), so this
is the ceiling of records per second a deployment can scale to, whatever its inference capacity.

    python -m bench.chain_writers [--seconds 10] [--processes 1 2 4] [--concurrency 1 8] [--write-docs]

Each process runs the service's own DurableWriter (service/db/writer.py) on its own engine against one
fresh PostgreSQL database, and `concurrency` coroutines that each await `record()` of one prediction
row in a loop, as requests awaiting their record do. Measured per configuration: records committed
per second (all processes), the wait of each `record()` (p50, p99: what an answer waits for its
commit), rows per commit; then `audit verify` must find the chain intact and every row there once.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine, markdown_table, now, write_block

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- chain_writers:begin -->", "<!-- chain_writers:end -->"


def bench_row() -> dict:
    """One predictions row of realistic size, as the service records it (shared with bench.outage_replay)."""
    import hashlib
    import os
    import uuid
    from datetime import UTC, datetime

    payload = os.urandom(16)
    return {
        "id": uuid.uuid4(),
        "request_id": "hmac-sha256:" + hashlib.sha256(payload).hexdigest(),
        "created_at": datetime.now(UTC),
        "client_id": "bench",
        "model_name": "oct2017-sample-student",
        "model_version": "0.1.0",
        "model_sha256": "c" * 64,
        "teacher_model_name": None,
        "teacher_model_version": None,
        "teacher_model_sha256": None,
        "input_sha256": hashlib.sha256(payload + b"in").hexdigest(),
        "format": "jpeg",
        "width": 512,
        "height": 496,
        "frame_index": None,
        "volume_id": None,
        "probabilities": {"normal": 0.01, "drusen": 0.04, "cnv": 0.95},
        "label": "cnv",
        "confidence": 0.95,
        "refer": False,
        "second_opinion": None,
        "timing_ms": {"decode": 2.0, "queue": 0.1, "inference": 20.0, "total": 23.0},
        "gradable": True,
        "gate_reason": None,
        "ood_score": 1.16,
    }


def _process(
    url: str, spool: str, key_hex: str, concurrency: int, seconds: float, start_at: float, out
) -> None:
    """One service process's writer and its `concurrency` recording requests; every process keys the
    chain with the same audit key, as replicas do."""
    from service.audit_key import AuditKey
    from service.db.session import make_engine
    from service.db.writer import DurableWriter

    class Observer:
        commits = 0

        def db_write(self, seconds: float, rows: int) -> None:
            Observer.commits += 1

        def db_failure(self) -> None:
            pass

        def spool_backlog(self, rows: int) -> None:
            pass

    async def main() -> tuple[list[float], int]:
        engine = make_engine(url)
        writer = DurableWriter(
            engine, spool, queue_size=4096, observer=Observer(), chain_key=AuditKey(bytes.fromhex(key_hex))
        )
        await writer.start()
        waits: list[float] = []
        while time.time() < start_at:  # every process starts together
            await asyncio.sleep(0.001)
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                await writer.record([bench_row()])
                waits.append(time.perf_counter() - began)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        await writer.stop()
        engine.dispose()
        return waits, Observer.commits

    out.put(asyncio.run(main()))


def measure(processes: int, concurrency: int, seconds: float) -> dict:
    from kdoct_testing.postgres import create_database, drop_database
    from service.audit_key import AuditKey
    from service.db.audit import verify
    from service.db.migrate import upgrade
    from service.db.session import make_engine

    name, url = create_database(prefix="kdoct_bench_")
    try:
        upgrade(url)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        key_hex = os.urandom(32).hex()
        start_at = time.time() + 3.0 + processes  # after every process has imported and connected
        with tempfile.TemporaryDirectory() as spool_root:
            workers = [
                context.Process(
                    target=_process,
                    args=(url, f"{spool_root}/{index}", key_hex, concurrency, seconds, start_at, queue),
                )
                for index in range(processes)
            ]
            for worker in workers:
                worker.start()
            results = [queue.get(timeout=seconds + 120) for _ in workers]
            for worker in workers:
                worker.join(timeout=30)
        waits = sorted(wait for result in results for wait in result[0])
        commits = sum(result[1] for result in results)
        engine = make_engine(url)
        try:
            report = verify(engine, key=AuditKey(bytes.fromhex(key_hex)))
        finally:
            engine.dispose()
        if not report.ok or report.rows_checked != len(waits):
            raise SystemExit(f"chain check failed: {report}, {len(waits)} records awaited")
        return {
            "records_per_s": len(waits) / seconds,
            "p50_ms": statistics.median(waits) * 1e3,
            "p99_ms": waits[int(0.99 * (len(waits) - 1))] * 1e3,
            "rows_per_commit": len(waits) / max(1, commits),
            "records": len(waits),
        }
    finally:
        drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chain_writers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--write-docs", action="store_true", help=f"put the table in {DOCS.name}")
    args = parser.parse_args(argv)
    rows = []
    for concurrency in args.concurrency:
        for processes in args.processes:
            figures = measure(processes, concurrency, args.seconds)
            rows.append(
                [
                    str(processes),
                    str(concurrency),
                    f"{figures['records_per_s']:.0f}",
                    f"{figures['p50_ms']:.2f}",
                    f"{figures['p99_ms']:.2f}",
                    f"{figures['rows_per_commit']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    command = "python -m bench.chain_writers " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = ["processes", "requests in flight per process", "records/s (all)", "record wait p50 (ms)",
              "record wait p99 (ms)", "rows per commit"]  # fmt: skip
    text = (
        f"Measured {now()} on {machine()}, PostgreSQL 15 on the same machine (127.0.0.1), "
        f"`{command.strip()}`: {args.seconds:g} s per row; after each, `audit verify` found the chain "
        f"intact with every record once.\n\n{markdown_table(header, rows)}\n"
    )
    print(text)
    if args.write_docs:
        write_block(BEGIN, END, text, heading="Records: several processes sharing one PostgreSQL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
