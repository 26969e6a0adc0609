"""A real uvicorn server (`python -m service serve`) in a subprocess, on the test bundles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdoct_testing.bundles import build_tiny_bundles
from kdoct_testing.server import running_service


@pytest.fixture(scope="session")
def e2e_bundles(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Path]:
    return build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)


@pytest.fixture(scope="module")
def server(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[dict]:
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
    with running_service(env, workdir, log_path, ready_timeout_s=90, stop_timeout_s=20) as service:
        yield {"url": service.url, "log": log_path}
