"""A real uvicorn server (`python -m service serve`) for the hostile-input suite, on tiny real bundles,
with an 8 MiB upload cap so that the oversized-body cases stay cheap."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdoct_testing.bundles import build_tiny_bundles
from kdoct_testing.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from kdoct_testing.server import running_service

MAX_UPLOAD_BYTES = 8 << 20


class HostileServer:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def reset_peak(self) -> None:
        """Restart the peak-RSS count at the current RSS: a spike that is freed again before the request
        ends leaves RSS unchanged, but not the peak."""
        reset_peak_rss(self.process.pid)

    def peak(self) -> int:
        return peak_rss_bytes(self.process.pid)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, repo_root: Path) -> Iterator:
    bundles = build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)
    workdir = tmp_path_factory.mktemp("hostile-server")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(bundles["student"]),
        KDOCT_SECOND_OPINION="never",
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="2",
        KDOCT_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        KDOCT_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        # Loopback only and SQLite: the hostile suite tests input handling, not keys (tests/records does).
        KDOCT_AUTH="disabled",
        KDOCT_LOG_LEVEL="warning",
        PYTHONPATH=str(repo_root),
    )
    # The records schema must exist before the service's durable writer starts.
    upgrade = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    if upgrade.returncode != 0:
        pytest.fail(f"python -m service db upgrade failed:\n{upgrade.stderr[-3000:]}")
    log_path = workdir / "server.log"
    with running_service(env, workdir, log_path, ready_timeout_s=120, stop_timeout_s=20) as service:
        yield HostileServer(service.url, service.process, log_path)
