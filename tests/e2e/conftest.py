"""A real uvicorn server (`python -m service serve`) in a subprocess, on the test bundles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# The bundle and DICOM builders live with the service tests; share them rather than copy them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_fixtures import build_bundles  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def e2e_bundles(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Path]:
    return build_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)


@pytest.fixture(scope="module")
def server(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[dict]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("server")
    log_path = workdir / "server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(e2e_bundles["student"]),
        KDOCT_TEACHER_BUNDLE=str(e2e_bundles["teacher"]),
        KDOCT_SECOND_OPINION="never",
        KDOCT_MAX_BATCH_SIZE="8",
        KDOCT_MAX_BATCH_WAIT_MS="5",
        KDOCT_MAX_QUEUE="128",
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="2",
        KDOCT_MAX_UPLOAD_BYTES=str(2 << 20),
        KDOCT_LOG_LEVEL="debug",
        KDOCT_AUTH="disabled",
        PYTHONPATH=str(repo_root),
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if process.poll() is not None:
                    pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{base_url}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready after 90 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield {"url": base_url, "log": log_path}
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
