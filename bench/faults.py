"""Item 4: faults under load. (a) PostgreSQL stopped during load: 2xx answers against prediction rows
after recovery (equal, no duplicates) and the time until the spool is drained; (b) SIGTERM during
load: in-flight requests finish and are recorded, the process exits within its grace period;
(c) SIGKILL of one of two uvicorn workers: only that worker's in-flight requests fail."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import psycopg

from bench.bundles import CACHE, bench_bundle, sample_jpegs
from bench.report import markdown_table
from bench.server import ServiceProcess
from kdoct_testing.load_client import Connection, build_classify_requests
from kdoct_testing.postgres import ThrowawayCluster

log = logging.getLogger(__name__)

__all__ = ["faults"]


@dataclass
class Sent:
    began: float
    ended: float
    status: str  # "200", "503", "error: ConnectionResetError" ...


async def _load(port: int, requests: list[bytes], concurrency: int, until: asyncio.Event) -> list[Sent]:
    """Closed-loop load until `until` is set; every request's start, end and outcome."""
    log_: list[Sent] = []

    async def worker(index: int) -> None:
        connection = Connection("127.0.0.1", port)
        position = index
        while not until.is_set():
            began = time.perf_counter()
            try:
                status, _, _ = await connection.request(requests[position % len(requests)])
                outcome = str(status)
            except (OSError, asyncio.IncompleteReadError) as exc:
                outcome = f"error: {type(exc).__name__}"
                await asyncio.sleep(0.05)
            log_.append(Sent(began, time.perf_counter(), outcome))
            position += concurrency
        connection.close()

    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return log_


def _rows(libpq_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url, connect_timeout=3) as conn:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM predictions").fetchone()
    return total, distinct


def _workdir(name: str):
    path = CACHE / "runs" / f"{name}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_outage(quick: bool) -> list[str]:
    before, outage, after = (4.0, 10.0, 4.0) if quick else (10.0, 30.0, 10.0)
    with ThrowawayCluster() as cluster:
        server = ServiceProcess(bench_bundle("student"), _workdir("outage"), database_url=cluster.url)
        with server:
            requests = build_classify_requests(sample_jpegs(32), "127.0.0.1", server.port, server.api_key)

            async def scenario() -> tuple[list[Sent], float]:
                until = asyncio.Event()
                load = asyncio.create_task(_load(server.port, requests, 4, until))
                await asyncio.sleep(before)
                await asyncio.to_thread(cluster.stop)
                await asyncio.sleep(outage)
                await asyncio.to_thread(cluster.start)
                restarted = time.perf_counter()
                await asyncio.sleep(after)
                until.set()
                return await load, restarted

            sent, restarted = asyncio.run(scenario())
            statuses = Counter(item.status for item in sent)
            answered = statuses.get("200", 0)
            deadline, drained_at = time.perf_counter() + 180, None
            rows = (0, 0)
            while time.perf_counter() < deadline:
                try:
                    rows = _rows(cluster.libpq_url)
                except psycopg.Error:
                    rows = (0, 0)
                if rows[0] >= answered:
                    drained_at = time.perf_counter()
                    break
                time.sleep(0.5)
    drained = f"{drained_at - restarted:.1f} s after restart" if drained_at else "not within 180 s"
    verdict = "equal, no duplicates" if rows[0] == answered and rows[0] == rows[1] else "**MISMATCH**"
    return [
        f"PostgreSQL stopped {outage:g} s",
        f"{answered} x 200, others {dict((k, v) for k, v in statuses.items() if k != '200') or 0}",
        f"{rows[0]} rows ({rows[1]} distinct ids): {verdict}; spool drained {drained}",
    ]


def sigterm_drain(quick: bool) -> list[str]:
    server = ServiceProcess(bench_bundle("student"), _workdir("sigterm"), database_url=None)
    server.env["KDOCT_DATABASE_URL"] = f"sqlite:///{server.workdir / 'records.db'}"
    server.database_url = server.env["KDOCT_DATABASE_URL"]
    server.start()
    requests = build_classify_requests(sample_jpegs(32), "127.0.0.1", server.port, server.api_key)
    grace = 10.0 + 5.0  # KDOCT_DRAIN_TIMEOUT_S default + uvicorn's margin (service/commands/serve.py)

    async def scenario() -> tuple[list[Sent], float, float | None]:
        until = asyncio.Event()
        load = asyncio.create_task(_load(server.port, requests, 8, until))
        await asyncio.sleep(2.0 if quick else 5.0)
        signalled = time.perf_counter()
        server.signal(signal.SIGTERM)
        exited = None
        while time.perf_counter() - signalled < grace + 10:
            if server.process.poll() is not None:
                exited = time.perf_counter()
                break
            await asyncio.sleep(0.05)
        until.set()
        return await load, signalled, exited

    try:
        sent, signalled, exited = asyncio.run(scenario())
    finally:
        server.stop()
    in_flight = [item for item in sent if item.began < signalled < item.ended]
    finished = sum(1 for item in in_flight if item.status == "200")
    answered = sum(1 for item in sent if item.status == "200")
    rows = _sqlite_rows(server.workdir / "records.db")
    exit_s = (
        f"{exited - signalled:.2f} s (grace {grace:g} s)"
        if exited
        else f"did not exit within {grace + 10:g} s"
    )
    return [
        "SIGTERM under load (8 connections)",
        f"{finished}/{len(in_flight)} in-flight requests answered 200; {answered} x 200 in all",
        f"exit {exit_s}, code {server.process.returncode} (uvicorn re-raises SIGTERM after its graceful "
        f"shutdown); {rows} rows for {answered} answers",
    ]


def _sqlite_rows(path) -> int | str:
    import sqlite3

    try:
        with sqlite3.connect(path) as conn:
            return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.Error as exc:
        return f"n/a ({exc})"


def worker_kill(quick: bool) -> list[str]:
    server = ServiceProcess(bench_bundle("student"), _workdir("sigkill"), database_url=None, workers=2)
    server.env["KDOCT_DATABASE_URL"] = f"sqlite:///{server.workdir / 'records.db'}"
    server.database_url = server.env["KDOCT_DATABASE_URL"]
    with server:
        time.sleep(2.0)  # both workers up
        workers = server.worker_pids()
        requests = build_classify_requests(sample_jpegs(32), "127.0.0.1", server.port, server.api_key)

        async def scenario() -> tuple[list[Sent], float, float | None]:
            until = asyncio.Event()
            load = asyncio.create_task(_load(server.port, requests, 8, until))
            await asyncio.sleep(3.0)
            killed = time.perf_counter()
            os.kill(workers[0], signal.SIGKILL)
            replaced = None
            while time.perf_counter() - killed < (8.0 if quick else 15.0):
                current = server.worker_pids()
                if replaced is None and len(current) >= 2 and workers[0] not in current:
                    replaced = time.perf_counter()
                await asyncio.sleep(0.1)
            until.set()
            return await load, killed, replaced

        sent, killed, replaced = asyncio.run(scenario())
    failed = [item for item in sent if item.status != "200"]
    in_flight = [item for item in sent if item.began < killed < item.ended]
    late_failures = [item for item in failed if item.began > killed + 0.5]
    respawn = (
        f"replacement worker after {replaced - killed:.1f} s" if replaced else "no replacement worker seen"
    )
    return [
        f"SIGKILL of 1 of {len(workers)} workers under load (8 connections)",
        f"{len(failed)} failed of {len(sent)} ({len(in_flight)} in flight at the kill, over both workers); "
        f"{len(late_failures)} failures among requests sent > 0.5 s after the kill",
        respawn,
    ]


def faults(quick: bool) -> str:
    rows = []
    checks = [
        ("database outage", database_outage),
        ("SIGTERM", sigterm_drain),
        ("worker SIGKILL", worker_kill),
    ]
    for name, check in checks:
        try:
            rows.append(check(quick))
        except Exception as exc:  # noqa: BLE001 - report the fault check that broke, run the others
            log.exception("fault check %s failed", name)
            rows.append([name, f"**check failed**: {type(exc).__name__}: {str(exc)[:200]}", ""])
    return "\n\n".join(
        [
            "## 4. Faults under load",
            "Student bundle at 384 px, real JPEGs, closed-loop load. Database outage: a throwaway PostgreSQL "
            "cluster of the benchmark's own (initdb + pg_ctl), stopped and restarted under load. SIGTERM and "
            "SIGKILL: SQLite records.",
            markdown_table(["fault", "answers", "records / recovery"], rows),
        ]
    )
