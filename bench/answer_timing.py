"""Where an answer's time goes at concurrency 1: the service's own `timing_ms` (decode, queue,
inference, total) beside the client's latency, and the same bundle's bare ONNX Runtime forward in a
plain loop measured right before, on the EfficientNet-B2 bench student with PostgreSQL records.

    python -m bench.answer_timing [--requests 120] [--ack spool|database]

Prints medians (the first 20 answers are warm-up); nothing is written to the docs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from bench.bundles import CACHE, bench_bundle, sample_jpegs
from bench.report import machine, now
from bench.server import ServiceProcess
from bench.throughput import bare_batch1, database_url

WARMUP = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_timing", description=__doc__)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--ack", choices=("spool", "database"), default="spool", help="KDOCT_RECORD_ACK")
    args = parser.parse_args(argv)
    bundle = bench_bundle("student")
    workdir = CACHE / "runs" / f"timing-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    url, drop = database_url("postgresql", workdir)
    bare_rate, bare_ms = bare_batch1(bundle, 6.0, "fp32", spinning=True)
    client_ms, parts = [], []
    try:
        settings = {"KDOCT_RECORD_ACK": args.ack}
        with ServiceProcess(bundle, workdir, database_url=url, settings=settings) as server:
            uploads = [path.read_bytes() for path in sample_jpegs(32)]
            with httpx.Client(headers={"Authorization": f"Bearer {server.api_key}"}, timeout=60) as client:
                for index in range(args.requests + WARMUP):
                    began = time.perf_counter()
                    answer = client.post(
                        f"http://127.0.0.1:{server.port}/classify",
                        files={"file": ("scan.jpeg", uploads[index % len(uploads)], "image/jpeg")},
                    )
                    answer.raise_for_status()
                    if index >= WARMUP:
                        client_ms.append((time.perf_counter() - began) * 1000)
                        parts.append(answer.json()["timing_ms"])
    finally:
        drop()
    print(f"{now()} on {machine()}; KDOCT_RECORD_ACK={args.ack}, {len(client_ms)} answers, medians:")
    print(f"  bare ONNX Runtime forward, batch 1: {bare_ms:.1f} ms ({bare_rate:.1f} img/s)")
    print(f"  client latency: {statistics.median(client_ms):.1f} ms")
    for name in parts[0]:
        print(f"  service timing_ms.{name}: {statistics.median(part[name] for part in parts):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
