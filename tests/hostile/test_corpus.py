"""Every hostile upload of the corpus against a real uvicorn server: a precise 4xx (or 200 for valid
oddities), never a 5xx; afterwards the server is alive, answers a real B-scan, and its memory stayed
bounded. A summary goes to test-artifacts/hostile-corpus.json (docs/BENCHMARKS.md shows it)."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import httpx
import pytest
from corpus import Case, Scan, build_corpus

# Bombs are refused from their headers and bodies are capped at 8 MiB: nothing should grow by more.
RSS_GROWTH_LIMIT = 200 << 20
# No single upload may make the server's peak RSS jump by more, even for a moment (a 1 MB deflated
# DICOM took it up by 2 GiB before decoding was bounded, docs/SECURITY.md).
PEAK_GROWTH_LIMIT = 300 << 20
RESULTS: dict[str, dict] = {}


CORPUS = build_corpus()


@pytest.fixture(scope="module")
def scan_path(sample_jpegs) -> Path:
    return sample_jpegs["DRUSEN"][0]


@pytest.fixture(scope="module")
def scan(scan_path) -> Scan:
    return Scan(scan_path)


@pytest.fixture(scope="module")
def baseline_rss(hostile_server, scan_path) -> int:
    # One real request first, so that lazily built state (sessions, pools) is in the baseline.
    with open(scan_path, "rb") as handle:
        response = httpx.post(f"{hostile_server.url}/classify", files={"file": handle}, timeout=60)
    assert response.status_code == 200, response.text
    return hostile_server.rss()


def _send_raw(port: int, case: Case, scan: Scan) -> int:
    """Send a raw request (head + streamed zeros) and return the status the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(case.raw(scan))
        piece = b"\0" * 65536
        sent = 0
        try:
            while sent < case.body_bytes:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:  # the server answered before the body ended: stop sending
                    break
                chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if case.chunked else piece
                sock.sendall(chunk)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        deadline = time.monotonic() + 30
        while b"\r\n" not in answer and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    if not answer.startswith(b"HTTP/1.1 "):
        pytest.fail(f"{case.name}: no HTTP answer (connection dropped after {sent} body bytes)")
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_hostile_upload_gets_a_precise_answer(hostile_server, baseline_rss, scan, case: Case) -> None:
    request = case.build(scan) if case.build is not None else None
    hostile_server.reset_peak()
    rss_before = hostile_server.rss()
    started = time.perf_counter()
    if request is None:
        status, content_type, detail = _send_raw(hostile_server.port, case, scan), None, ""
    else:
        response = httpx.post(f"{hostile_server.url}/classify", timeout=60, **request)
        status, content_type = response.status_code, response.headers.get("content-type", "")
        detail = response.json().get("detail", "") if content_type.endswith("json") else response.text[:200]
    RESULTS[case.name] = {
        "status": status,
        "expected": sorted(case.expected),
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "detail": str(detail)[:160],
        "peak_growth_mb": round((hostile_server.peak() - rss_before) / 2**20, 1),
    }
    assert status < 500, f"{case.name}: {status} {detail}\n{hostile_server.log_tail()}"
    assert status in case.expected, f"{case.name}: {status} not in {sorted(case.expected)}: {detail}"
    if 400 <= status < 500 and content_type is not None and status not in (400,):
        assert content_type.startswith("application/problem+json"), f"{case.name}: {content_type}"
        assert detail, f"{case.name}: a rejection must say what was wrong"
    peak_growth = hostile_server.peak() - rss_before
    assert peak_growth < PEAK_GROWTH_LIMIT, f"{case.name}: peak RSS rose by {peak_growth / 2**20:.0f} MiB"


def test_server_survives_the_corpus(hostile_server, baseline_rss, scan_path, artifacts_dir) -> None:
    # Runs after the corpus (file order); with -k selecting a few cases it still checks what they left.
    assert hostile_server.process.poll() is None, f"server died:\n{hostile_server.log_tail()}"
    assert httpx.get(f"{hostile_server.url}/health/live", timeout=10).status_code == 200
    with open(scan_path, "rb") as handle:
        response = httpx.post(f"{hostile_server.url}/classify", files={"file": handle}, timeout=60)
    assert response.status_code == 200, response.text
    assert abs(sum(response.json()["probabilities"].values()) - 1.0) < 1e-6
    growth = hostile_server.rss() - baseline_rss
    summary = {
        "cases": RESULTS,
        "kinds": len(RESULTS),
        "server_errors": sum(1 for result in RESULTS.values() if result["status"] >= 500),
        "rss_baseline_mb": round(baseline_rss / 2**20, 1),
        "rss_growth_mb": round(growth / 2**20, 1),
    }
    if len(RESULTS) == len(CORPUS):  # the report docs/BENCHMARKS.md shows is of the whole corpus only
        (artifacts_dir / "hostile-corpus.json").write_text(json.dumps(summary, indent=2))
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB over the corpus"
