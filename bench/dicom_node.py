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
VOLUME_SIZES = (8, 25)
CONCURRENCY = 2
SETTINGS = {
    "KDOCT_INFERENCE_THREADS": "1",
    "KDOCT_DECODE_THREADS": "2",
    "KDOCT_LOG_LEVEL": "warning",
    "KDOCT_DICOM_CALLERS": "BENCH",
    "KDOCT_DICOM_SERIES_IDLE_S": "0.2",
}


def _series(count: int, frames: int) -> list[bytes]:
    """`count` volumes of `frames` B-scans each (the sample's CNV B-scans in turn; each series has UIDs
    of its own, so a B-scan used again is classified again)."""
    scans = [jpeg_gray(path) for path in sorted((SAMPLE_DIR / "CNV").glob("*.jpeg"))]
    scans = [scan for scan in scans if scan.shape == (496, 512)]
    return [make_dicom([scans[(i * frames + j) % len(scans)] for j in range(frames)]) for i in range(count)]


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


def measure(rounds: int, count: int, sizes: tuple[int, ...], workdir: Path) -> dict[int, dict]:
    """Per volume size: each round's series/s through /classify and through the node, alternating."""
    student = bench_bundle("student")
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
    figures: dict[int, dict] = {}
    try:
        with running_node(env, node_dir, node_dir / "node.log", ready_timeout_s=300) as node:
            for frames in sizes:
                series = _series(count, frames)
                _classify_round(api.url, series[:2])  # warm both
                _node_round(node, series[:2])
                http, dicom = [], []
                for _ in range(rounds):
                    http.append(_classify_round(api.url, series))
                    dicom.append(_node_round(node, series))
                figures[frames] = {"classify": http, "node": dicom}
    finally:
        api.stop()
    return figures


def dicom_section(quick: bool, command: str = "python -m bench --only dicom") -> str:
    rounds, count = (3, 8) if quick else (5, 12)
    figures = measure(rounds, count, VOLUME_SIZES, CACHE / "dicom-bench")
    rows, verdicts = [], []
    for frames, measured in figures.items():
        http, dicom = statistics.median(measured["classify"]), statistics.median(measured["node"])
        ratio = dicom / http
        verdicts.append(f"{frames} B-scans: {ratio:.2f} ({'**met**' if ratio >= TARGET else '**not met**'})")
        for name, values in (
            ("POST /classify", measured["classify"]),
            ("DICOM node (C-STORE)", measured["node"]),
        ):
            median = statistics.median(values)
            rounds_text = ", ".join(fmt(value, 2) for value in values)
            rows.append([str(frames), name, fmt(median, 2), fmt(median * frames, 1), rounds_text])
    table = markdown_table(["B-scans a series", "way in", "series/s (median)", "frames/s", "rounds"], rows)
    return (
        "## DICOM node against POST /classify (series per second)\n\n"
        f"{count} multi-frame OPT series of real CNV B-scans (496x512, uncompressed) per round, at two "
        f"volume sizes: 8 B-scans (a short series: the node's fixed costs weigh most) and 25 (the smallest "
        f"common "
        f"macular volume protocol, e.g. Spectralis 25 sections; Cirrus and Topcon cubes have 128). The "
        f"benchmark student (EfficientNet-B2, random weights), {CONCURRENCY} in flight, {rounds} rounds "
        f"alternating the two ways in. The node's rate counts from the first C-STORE to the last series "
        f"classified, its Grad-CAM, SR and PDF built (delivery off). Measured {now()} on {machine()}.\n\n"
        f"{table}\n\nRatio node / POST /classify (target >= {TARGET}): {'; '.join(verdicts)}.\n\n"
        "Per series the node does what /classify does, plus: the instance stored (fsync'd), the Grad-CAM of "
        "the most severe frame, the SR (highdicom: one group per frame) and the PDF. The reports are built "
        "in a process of their own (pure Python: under the event loop's GIL they took its time) and "
        "PyTorch, which runs only the Grad-CAM in the node, is kept to one thread (on both cores it fought "
        "the inference thread). Before those two changes the same command measured 0.59 for 8 B-scans "
        "(16 series, 5 rounds; 2026-12-05 00:55 UTC, this machine).\n\n"
        f"Command: `{command}{' --quick' if quick else ''}`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicom_node", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    write_section("dicom", dicom_section(args.quick, "python -m bench.dicom_node"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
