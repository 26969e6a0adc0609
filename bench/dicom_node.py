"""`python -m bench --only dicom` (or `python -m bench.dicom_node`): series per second through the DICOM
node against the same frames through POST /classify, in one sitting.

Both processes serve the benchmark student (bench/bundles.py) with the same settings, one after the
other within each round (A, B, A, B, ...: the machine's drift falls on both). A round sends every series
of the set: to /classify, each series' multi-frame OPT as one upload, two requests in flight; to the
node, each by C-STORE over its own association, two associations at a time, timed until the node has
classified the last of them (its metrics). The node does more per series than /classify: it stores the
instance (fsync'd), waits KDOCT_DICOM_SERIES_IDLE_S (0.2 s here), explains the most severe answer
(Grad-CAM) and builds the SR and the PDF; delivery is off (no destination), so the PACS's own speed is
not measured. Target: the node's rate >= 0.8 of /classify's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.bundles import CACHE, SAMPLE_DIR, bench_bundle
from bench.report import fmt, machine, markdown_table, now, write_section
from bench.server import ServiceProcess
from kdoct_testing.dicom_node import c_store, running_node
from kdoct_testing.uploads import jpeg_gray, make_dicom

__all__ = ["dicom_section"]

TARGET = 0.8
CONCURRENCY = 2
SETTINGS = {
    "KDOCT_INFERENCE_THREADS": "1",
    "KDOCT_DECODE_THREADS": "2",
    "KDOCT_LOG_LEVEL": "warning",
    "KDOCT_DICOM_CALLERS": "BENCH",
    "KDOCT_DICOM_SERIES_IDLE_S": "0.2",
}


def _series(count: int, frames: int) -> list[bytes]:
    scans = [jpeg_gray(path) for path in sorted((SAMPLE_DIR / "CNV").glob("*.jpeg"))]
    shape = (496, 512)
    scans = [scan for scan in scans if scan.shape == shape]
    return [make_dicom(scans[i * frames : (i + 1) * frames]) for i in range(count)]


def _classify_round(url: str, series: list[bytes]) -> float:
    def post(data: bytes) -> None:
        response = httpx.post(f"{url}/classify", files={"file": ("s.dcm", data)}, timeout=120)
        response.raise_for_status()

    began = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(post, series))
    return len(series) / (time.perf_counter() - began)


def _classified(http_url: str) -> float:
    for line in httpx.get(f"{http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith('kdoct_dicom_series_total{outcome="classified"} '):
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError("the node's metrics lack kdoct_dicom_series_total")


def _node_round(node, series: list[bytes]) -> float:
    before = _classified(node.http_url)
    began = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = list(pool.map(lambda data: c_store(node.dicom_port, [data], calling_ae="BENCH"), series))
    if any(status != [0] for status in statuses):
        raise RuntimeError(f"the node refused instances: {statuses}")
    while _classified(node.http_url) < before + len(series):
        if time.perf_counter() - began > 600:
            raise RuntimeError("the node did not classify the round within 600 s")
        time.sleep(0.02)
    return len(series) / (time.perf_counter() - began)


def measure(rounds: int, count: int, frames: int, workdir: Path) -> dict:
    student = bench_bundle("student")
    series = _series(count, frames)
    api = ServiceProcess(student, workdir / "api", settings=SETTINGS).start()
    node_dir = workdir / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **api.env,
        "KDOCT_DATABASE_URL": f"sqlite:///{node_dir / 'records.db'}",
        "KDOCT_SPOOL_DIR": str(node_dir / "spool"),
        "KDOCT_DICOM_STORE_DIR": str(node_dir / "store"),
        "KDOCT_AUDIT_KEY_FILE": str(node_dir / "audit.key"),
        "KDOCT_ANCHOR_FILE": str(node_dir / "anchors.jsonl"),
    }
    try:
        with running_node(env, node_dir, node_dir / "node.log", ready_timeout_s=300) as node:
            _classify_round(api.url, series[:2])  # warm both
            _node_round(node, series[:2])
            http, dicom = [], []
            for _ in range(rounds):
                http.append(_classify_round(api.url, series))
                dicom.append(_node_round(node, series))
    finally:
        api.stop()
    return {"classify": http, "node": dicom, "count": count, "frames": frames}


def dicom_section(quick: bool) -> str:
    rounds, count, frames = (3, 8, 8) if quick else (5, 16, 8)
    figures = measure(rounds, count, frames, CACHE / "dicom-bench")
    http, dicom = statistics.median(figures["classify"]), statistics.median(figures["node"])
    ratio = dicom / http
    met = "**met**" if ratio >= TARGET else "**not met**"
    rows = [
        [name, fmt(statistics.median(values), 2), fmt(statistics.median(values) * frames, 1)]
        + [", ".join(fmt(value, 2) for value in values)]
        for name, values in (
            ("POST /classify", figures["classify"]),
            ("DICOM node (C-STORE)", figures["node"]),
        )
    ]
    table = markdown_table(["way in", "series/s (median of rounds)", "frames/s", "rounds"], rows)
    return (
        "## DICOM node against POST /classify (series per second)\n\n"
        f"{count} multi-frame OPT series of {frames} real CNV B-scans (496x512, uncompressed), the "
        f"benchmark student (EfficientNet-B2, random weights), {CONCURRENCY} in flight, {rounds} rounds "
        f"alternating the two ways in. The node's rate counts from the first C-STORE to the last series "
        f"classified, its SR and PDF built (delivery off). Measured {now()} on {machine()}.\n\n"
        f"{table}\n\nRatio node / POST /classify: {ratio:.2f} (target >= {TARGET}: {met}).\n\n"
        f"Command: `python -m bench --only dicom{' --quick' if quick else ''}`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicom_node", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    write_section("dicom", dicom_section(args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
