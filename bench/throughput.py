"""Item 1: the service against the bare model, side by side in one run.

(a) bare ONNX Runtime forward of the student bundle (same session options and threads as the
service) on preprocessed real B-scans, at batch 1 and at its best batch size; (b) the real service
over HTTP with real JPEG uploads at concurrency 1, 4, 16, 64, with the record sink the service has
(SQLite and PostgreSQL once the durable writer is wired in; the in-memory sink before that).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.bundles import CACHE, bench_bundle, sample_jpegs
from bench.report import fmt, markdown_table
from bench.server import ServiceProcess
from kdoct_testing.load_client import LoadResult, build_classify_requests, closed_loop_threads

log = logging.getLogger(__name__)

__all__ = ["BareResult", "bare_onnx", "service_backends", "service_vs_bare"]

CONCURRENCY = (1, 4, 16, 64)
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class BareResult:
    batch1_images_per_s: float
    batch1_median_ms: float
    best_batch: int
    best_images_per_s: float
    by_batch: dict[int, float]
    spinning: bool  # the faster ORT thread setting at batch 1, used for every batch size
    batch1_by_spinning: dict[bool, float]


def _session(onnx_path: Path, spinning: bool):
    import onnxruntime as ort

    from service.inference.runtime import cpu_count

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})


def _images_per_s(run, chunks: list[np.ndarray], seconds: float) -> tuple[float, list[float]]:
    for chunk in chunks[:2]:
        run(chunk)  # warm-up
    done, index, latencies = 0, 0, []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        call_began = time.perf_counter()
        run(chunks[index % len(chunks)])
        latencies.append((time.perf_counter() - call_began) * 1000)
        done += chunks[0].shape[0]
        index += 1
    return done / (time.perf_counter() - began), latencies


def _bare_inputs(bundle_dir: Path, precision: str):
    """The bundle's graph of `precision` and a function giving its preprocessed B-scans in batches."""
    from PIL import Image

    from kdoct.bundle import load_bundle
    from kdoct.preprocess import preprocess_batch

    bundle = load_bundle(bundle_dir)
    onnx_path = bundle.int8_onnx_path if precision == "int8" else bundle.onnx_path
    images = []
    for path in sample_jpegs(16):
        with Image.open(path) as image:
            images.append(image.convert("L"))
    inputs = preprocess_batch(images, bundle.preprocess)

    def chunks(batch: int) -> list[np.ndarray]:
        return [np.ascontiguousarray(inputs[i : i + batch]) for i in range(0, len(inputs) - batch + 1, batch)]

    return onnx_path, chunks


def bare_batch1(bundle_dir: Path, seconds: float, precision: str, spinning: bool) -> tuple[float, float]:
    """(images/s, median ms) of the bare forward at batch 1: re-measured around each service run, so
    that the machine's speed at that moment (a shared host's varies by 2x over minutes) is its baseline."""
    onnx_path, chunks = _bare_inputs(bundle_dir, precision)
    rate, latencies = _images_per_s(_session(onnx_path, spinning), chunks(1), seconds)
    return rate, statistics.median(latencies)


def bare_onnx(
    bundle_dir: Path, seconds: float, batch_sizes=(1, 2, 4, 8), precision: str = "fp32"
) -> BareResult:
    """The bare forward, with ORT's own thread spinning on and off: the faster one is the baseline, so
    the service is compared with the best the bare model does on this machine."""

    onnx_path, chunks = _bare_inputs(bundle_dir, precision)
    batch1, latencies = {}, {}
    for spinning in (True, False):
        batch1[spinning], latencies[spinning] = _images_per_s(
            _session(onnx_path, spinning), chunks(1), seconds
        )
    spinning = max(batch1, key=batch1.get)
    run = _session(onnx_path, spinning)
    by_batch = {1: batch1[spinning]}
    for batch in batch_sizes[1:]:
        by_batch[batch] = _images_per_s(run, chunks(batch), seconds)[0]
    best = max(by_batch, key=by_batch.get)
    return BareResult(
        batch1[spinning],
        statistics.median(latencies[spinning]),
        best,
        by_batch[best],
        by_batch,
        spinning,
        batch1,
    )


def service_backends() -> list[tuple[str, str | None]]:
    """(label, database URL) of the record sinks to measure with."""
    return [("SQLite", "sqlite"), ("PostgreSQL", "postgresql")]


@dataclass(frozen=True)
class _Baseline:
    batch1_images_per_s: float
    batch1_median_ms: float


@dataclass(frozen=True)
class Variant:
    """One configuration of the service measured against the bare model of its own precision."""

    label: str
    database: str  # service_backends() kind
    precision: str  # fp32 | int8
    settings: tuple[tuple[str, str], ...] = ()


VARIANTS = (
    Variant("SQLite, spool first", "sqlite", "fp32"),
    Variant("PostgreSQL, commit first", "postgresql", "fp32", (("KDOCT_RECORD_ACK", "database"),)),
    Variant("PostgreSQL, spool first", "postgresql", "fp32"),
    Variant("PostgreSQL, spool first, INT8", "postgresql", "int8", (("KDOCT_PRECISION", "int8"),)),
)
# The production configuration: its capacity sizes the fixed-rate load (bench/load.py).
PRODUCTION = "PostgreSQL, spool first"
# Those the issue-17 targets apply to (PostgreSQL records, the default answer rule, each precision).
TARGETED = ("PostgreSQL, spool first", "PostgreSQL, spool first, INT8")


def database_url(kind: str | None, workdir: Path) -> tuple[str | None, callable]:
    """A fresh database of `kind` and a function that removes it."""
    if kind is None:
        return None, lambda: None
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'records.db'}", lambda: None
    import psycopg

    name = f"kdoct_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def measure_service(
    server: ServiceProcess, seconds: float, concurrency=CONCURRENCY, images: int = 64
) -> dict[int, LoadResult]:
    requests = build_classify_requests(sample_jpegs(images), "127.0.0.1", server.port, server.api_key)
    results = {}
    for level in concurrency:
        # One thread per connection on blocking sockets: about half the client CPU of the asyncio
        # client (0.2-0.6 vs 0.35-1.0 ms per request), CPU the client would take from the server.
        results[level] = closed_loop_threads(
            "127.0.0.1", server.port, requests, concurrency=level, duration_s=seconds, warmup_s=1.0
        )
        log.info(
            "concurrency %d: %.1f img/s, p50 %.1f ms",
            level,
            results[level].throughput,
            results[level].median(),
        )
    return results


def service_vs_bare(quick: bool, settings: dict[str, str] | None = None) -> tuple[str, dict]:
    """Markdown section and raw figures."""
    from bench.bundles import bench_int8_bundle

    bundles = {"fp32": bench_bundle("student"), "int8": bench_int8_bundle()}
    seconds = 4.0 if quick else 12.0
    load_before = os.getloadavg()[0]  # other work on the cores makes every figure below noisy
    bare = {
        precision: bare_onnx(bundle, 3.0 if quick else 10.0, precision=precision)
        for precision, bundle in bundles.items()
    }
    bare_seconds = 3.0 if quick else 6.0
    rows, figures = [], {"bare": {p: b.__dict__ for p, b in bare.items()}, "service": {}, "bare_around": {}}
    verdicts = []
    for variant in VARIANTS:
        workdir = CACHE / "runs" / f"service-{uuid.uuid4().hex[:6]}"
        url, drop = database_url(variant.database, workdir.parent / workdir.name)
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**(settings or {}), **dict(variant.settings)}
        bundle, spinning = bundles[variant.precision], bare[variant.precision].spinning
        around = [bare_batch1(bundle, bare_seconds, variant.precision, spinning)]
        try:
            with ServiceProcess(bundle, workdir, database_url=url, settings=env) as server:
                results = measure_service(server, seconds)
        finally:
            drop()
        around.append(bare_batch1(bundle, bare_seconds, variant.precision, spinning))
        baseline = _Baseline(
            statistics.mean(rate for rate, _ in around), statistics.mean(ms for _, ms in around)
        )
        figures["bare_around"][variant.label] = around
        figures["service"][variant.label] = {level: _summary(result) for level, result in results.items()}
        for level, result in results.items():
            overhead = result.p(50) - baseline.batch1_median_ms if level == 1 else None
            rows.append(
                [
                    variant.label,
                    str(level),
                    fmt(baseline.batch1_images_per_s) if level == 1 else "",
                    fmt(result.throughput),
                    fmt(result.p(50)),
                    fmt(result.p(95)),
                    fmt(result.p(99)),
                    fmt(result.throughput / baseline.batch1_images_per_s, 2),
                    fmt(overhead) if overhead is not None else "",
                    _errors(result),
                ]
            )
        if variant.label in TARGETED:
            best = max(result.throughput for result in results.values()) / baseline.batch1_images_per_s
            c1 = results[1].p(50) - baseline.batch1_median_ms
            verdicts.append(
                f"{variant.label}: best ratio {best:.2f} (target ≥ 0.9): **{_met(best >= 0.9)}**; "
                f"p50 overhead at concurrency 1 {c1:+.1f} ms (target ≤ 5 ms): **{_met(c1 <= 5)}**."
            )
    figures["production"] = PRODUCTION
    fp32, int8 = bare["fp32"], bare["int8"]
    text = "\n\n".join(
        [
            "## 1. Service against the bare model",
            f"Student `efficientnet_b2` at 384 px (random weights), ONNX Runtime on CPU, real OCT2017 JPEGs "
            f"(512x496 typical) over HTTP/1.1 keep-alive (one client thread per connection); "
            f"closed loop, {seconds:g} s per level after 1 s warm-up. Each service row is compared with the "
            f"bare model of its own precision at batch 1 (fp32 `model.onnx`, or the INT8 `model.int8.onnx` "
            f"`export --int8` adds), measured for {bare_seconds:g} s just before and just after that "
            f"configuration's levels with ORT's faster thread setting: their mean is its baseline "
            f"(this shared host's speed drifts by up to 2x within minutes, so a baseline from another "
            f"moment says little). At the start, bare fp32 batch 1: "
            f"{fp32.batch1_by_spinning[True]:.1f} images/s with ORT's thread spinning on, "
            f"{fp32.batch1_by_spinning[False]:.1f} with it off; INT8: {int8.batch1_by_spinning[True]:.1f} "
            f"and {int8.batch1_by_spinning[False]:.1f}. Records: *spool first* answers once the record "
            f"is fsync'd to the local journal "
            f"(`KDOCT_RECORD_ACK=spool`, the default), *commit first* once it is committed (`database`). "
            f"Load average when the run began: {load_before:.1f} on {os.cpu_count()} cores (above about 1, "
            f"other work shares the cores and the ratios are noisy).",
            markdown_table(
                ["bare ONNX Runtime, images/s", *[f"batch {batch}" for batch in fp32.by_batch]],
                [
                    [precision, *[fmt(value) for value in result.by_batch.values()]]
                    for precision, result in bare.items()
                ],
            ),
            markdown_table(
                [
                    "records",
                    "concurrency",
                    "bare b1 img/s (around it)",
                    "images/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "ratio to bare b1",
                    "p50 overhead ms",
                    "errors",
                ],
                rows,
            ),  # fmt: skip
            "\n".join(f"- {verdict}" for verdict in verdicts),
        ]
    )
    return text, figures


def _met(condition: bool) -> str:
    return "met" if condition else "not met"


def _errors(result: LoadResult) -> str:
    bad = {status: count for status, count in result.statuses.items() if not status.startswith("2")}
    return ", ".join(f"{status}: {count}" for status, count in sorted(bad.items())) or "0"


def _summary(result: LoadResult) -> dict:
    return {
        "images_per_s": result.throughput,
        "p50_ms": result.p(50),
        "p95_ms": result.p(95),
        "p99_ms": result.p(99),
        "statuses": dict(result.statuses),
    }
