"""End to end, issue 23's acceptance for the record path: a spool file with an undecodable line, left in
the spool directory by an earlier run, stops no insert once the service starts again.

A real `python -m service serve` on SQLite, with KDOCT_RECORD_ACK=spool (the default) and =database
(the Kubernetes setting). Before, the line killed the record writer silently at start: with `spool`
every answer was 200 and no row was inserted, with `database` every /classify was 503, and readiness
said ready throughout."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kdoct_testing.records import make_record, spool_line, stored_rows
from kdoct_testing.server import running_service
from service.db.session import make_engine

UNDECODABLE = b'\xff\xfe{"label": "garbage"}\n'
ANSWERS = 6


@pytest.fixture(scope="module")
def uploads(sample_jpegs) -> list[bytes]:
    return [path.read_bytes() for paths in sample_jpegs.values() for path in paths[:2]][:ANSWERS]


@pytest.fixture(params=["spool", "database"])
def restarted(request, e2e_bundles, tmp_path: Path, repo_root: Path) -> Iterator[dict]:
    """The service started on a spool directory an earlier run left a bad file in."""
    ack = request.param
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    left = [make_record(), make_record()]  # answered by the earlier run, not yet in the database
    spooled = spool_dir / "spool-4242-left-by-an-earlier-run.jsonl"
    spooled.write_bytes(spool_line(left[0]) + UNDECODABLE + spool_line(left[1]))
    database_url = f"sqlite:///{tmp_path / 'records.db'}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(e2e_bundles["student"]),
        KDOCT_SECOND_OPINION="never",
        KDOCT_DATABASE_URL=database_url,
        KDOCT_SPOOL_DIR=str(spool_dir),
        KDOCT_RECORD_ACK=ack,
        KDOCT_AUDIT_KEY_FILE=str(tmp_path / "audit.key"),
        KDOCT_ANCHOR_FILE=str(tmp_path / "anchors.jsonl"),
        KDOCT_AUTH="disabled",  # loopback and SQLite: this is about records, not keys
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="1",
        KDOCT_LOG_LEVEL="info",
        PYTHONPATH=str(repo_root),
    )
    upgraded = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    log_path = tmp_path / "server.log"
    with running_service(env, tmp_path, log_path, ready_timeout_s=120, stop_timeout_s=20) as service:
        yield {
            "url": service.url, "ack": ack, "spool_dir": spool_dir, "spooled": spooled, "left": left,
            "log": log_path, "database_url": database_url,
        }  # fmt: skip


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in /metrics")


def test_an_undecodable_spool_line_left_before_a_restart_stops_no_insert(restarted, uploads) -> None:
    url = restarted["url"]
    # The earlier run's file is replayed at start; the answers come after that attempt (asserted below).
    deadline = time.monotonic() + 10
    while restarted["spooled"].exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    answered: dict[str, str] = {}
    for data in uploads:
        response = httpx.post(f"{url}/classify", files={"file": ("scan", data)}, timeout=60)
        assert response.status_code == 200, response.text  # with `database`, every one was 503 before
        answered[response.json()["prediction_id"]] = hashlib.sha256(data).hexdigest()
    expected = {**answered, **{str(r["id"]): r["input_sha256"] for r in restarted["left"]}}

    engine = make_engine(restarted["database_url"])
    try:
        deadline = time.monotonic() + 30
        while (rows := stored_rows(engine)) != expected:  # rows = answers (and the earlier run's two)
            assert time.monotonic() < deadline, (
                f"{len(expected) - len(rows)} answered rows not in the database"
            )
            time.sleep(0.1)
    finally:
        engine.dispose()

    ready = httpx.get(f"{url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["records"] == "database", ready.text
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert metric(metrics, 'kdoct_spool_quarantined_total{reason="undecodable"}') == 1.0
    assert metric(metrics, 'kdoct_record_writer_restarts_total{task="writer"}') == 0.0

    spool_dir: Path = restarted["spool_dir"]
    kept = spool_dir / "quarantine" / f"{restarted['spooled'].name}.bad-lines"
    assert kept.read_bytes() == UNDECODABLE  # set aside as it was, never deleted
    assert kept.stat().st_mode & 0o777 == 0o600 and kept.parent.stat().st_mode & 0o777 == 0o700
    assert not restarted["spooled"].exists()
    log = restarted["log"].read_text(errors="replace")
    assert any("ERROR" in line and restarted["spooled"].name in line for line in log.splitlines()), log[
        -3000:
    ]
    assert "garbage" not in log
