"""Item 3: load at a fixed arrival rate (open model): 50 %, 90 % and 150 % of measured capacity.

Sends are scheduled at fixed times and latency counts from the scheduled time, so a stalled server
shows up as latency instead of as fewer requests (no coordinated omission). Above capacity the
service should shed with 503 + Retry-After at once while the requests it accepts keep their latency;
that depends on the queue bound, so the 150 % level is also run with the default queue (256).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from bench.bundles import CACHE, bench_bundle, sample_jpegs
from bench.report import fmt, markdown_table
from bench.server import ServiceProcess
from bench.throughput import database_url, service_backends
from kdoct_testing.load_client import LoadResult, build_classify_requests, closed_loop, open_loop, percentile

log = logging.getLogger(__name__)

__all__ = ["fixed_rate_load"]

LATENCY_BUDGET_S = 0.25  # the queue bound is sized so that a full queue waits about this long


def _capacity(server: ServiceProcess, requests: list[bytes], seconds: float) -> float:
    result = asyncio.run(closed_loop("127.0.0.1", server.port, requests, concurrency=8, duration_s=seconds))
    return result.throughput


def _row(label: str, rate: float, queue: int, result: LoadResult) -> list[str]:
    shed = result.statuses.get("503", 0)
    other = {status: count for status, count in result.statuses.items() if status not in ("503",)}
    other = {status: count for status, count in other.items() if not status.startswith("2")}
    return [
        label,
        fmt(rate),
        str(queue),
        str(result.sent),
        str(result.ok),
        str(shed),
        ", ".join(f"{status}: {count}" for status, count in sorted(other.items())) or "0",
        fmt(result.p(50)),
        fmt(result.p(99)),
        fmt(percentile(result.shed_latencies_ms, 50)) if shed else "",
        ("all" if not result.retry_after_missing else f"{shed - result.retry_after_missing}/{shed}")
        if shed
        else "",
    ]


def _run_levels(queue: int, levels: list[tuple[str, float]], seconds: float, capacity_from: dict | None):
    label, kind = service_backends()[-1]  # production-like: PostgreSQL once records are wired
    workdir = CACHE / "runs" / f"load-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True, exist_ok=True)
    url, drop = database_url(kind, workdir)
    rows, capacity = [], None
    try:
        settings = {"KDOCT_MAX_QUEUE": str(queue)} if queue else {}
        with ServiceProcess(bench_bundle("student"), workdir, database_url=url, settings=settings) as server:
            requests = build_classify_requests(sample_jpegs(64), "127.0.0.1", server.port, server.api_key)
            capacity = capacity_from or _capacity(server, requests, 3.0 if seconds < 10 else 8.0)
            for name, fraction in levels:
                rate = capacity * fraction
                result = asyncio.run(
                    open_loop("127.0.0.1", server.port, requests, rate=rate, duration_s=seconds)
                )
                log.info("%s: %.1f req/s -> %s", name, rate, dict(result.statuses))
                rows.append(_row(name, rate, queue or 256, result))
    finally:
        drop()
    return rows, capacity, label


def fixed_rate_load(quick: bool, service_figures: dict | None = None) -> str:
    seconds = 6.0 if quick else 20.0
    measured = None
    if service_figures:
        backend = service_figures["service"][service_figures["production"]]
        measured = max(level["images_per_s"] for level in backend.values())
    capacity = measured
    if capacity is None:
        # Measured on the server itself before the levels run.
        rows, capacity, label = _run_levels(0, [], 1.0, None)
    queue = max(2, round(capacity * LATENCY_BUDGET_S))
    levels = [("50 %", 0.5), ("90 %", 0.9), ("150 %", 1.5)]
    rows, _, label = _run_levels(queue, levels, seconds, capacity)
    default_rows, _, _ = _run_levels(0, [("150 %, default queue", 1.5)], seconds, capacity)
    header = [
        "load", "rate req/s", "max queue", "sent", "2xx", "503", "other", "2xx p50 ms", "2xx p99 ms",
        "503 p50 ms", "Retry-After",
    ]  # fmt: skip
    return "\n\n".join(
        [
            "## 3. Load at a fixed arrival rate",
            f"Open-model asyncio client (sends scheduled at a fixed rate, latency from the scheduled time), "
            f"{seconds:g} s per level, real JPEGs, records: {label}. Capacity {capacity:.1f} images/s "
            f"({'from item 1' if measured else 'closed loop, concurrency 8'}); `KDOCT_MAX_QUEUE` = "
            f"capacity x {LATENCY_BUDGET_S:g} s = {queue} for the first three rows.",
            markdown_table(header, rows + default_rows),
        ]
    )
