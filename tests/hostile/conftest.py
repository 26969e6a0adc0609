"""A real uvicorn server (`python -m service serve`) for the hostile-input suite, on tiny real bundles,
with an 8 MiB upload cap so that the oversized-body cases stay cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kdoct_testing.bundles import build_tiny_bundles
from kdoct_testing.dicom_node import running_node
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


def _service_env(student: Path, workdir: Path, repo_root: Path, **settings: str) -> dict[str, str]:
    """The server's environment: this student, SQLite and a spool in `workdir`, and `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(student),
        KDOCT_SECOND_OPINION="never",
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="2",
        KDOCT_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        KDOCT_LOG_LEVEL="warning",
        PYTHONPATH=str(repo_root),
    )
    env.update(settings)
    return env


def _cli(env: dict[str, str], workdir: Path, *args: str) -> str:
    """`python -m service ARGS` as the server's operator runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=workdir, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"python -m service {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, repo_root: Path) -> Iterator:
    bundles = build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)
    workdir = tmp_path_factory.mktemp("hostile-server")
    env = _service_env(
        bundles["student"],
        workdir,
        repo_root,
        KDOCT_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        # Loopback only and SQLite: the hostile suite tests input handling, not keys (tests/service/db does).
        KDOCT_AUTH="disabled",
    )
    # The records schema must exist before the service's durable writer starts.
    _cli(env, workdir, "db", "upgrade")
    log_path = workdir / "server.log"
    with running_service(env, workdir, log_path, ready_timeout_s=120, stop_timeout_s=20) as service:
        yield HostileServer(service.url, service.process, log_path)


# The ingress suite's server: keys on (scopes are part of what it tests), a small admission limit and a
# small memory budget, so that every bound is reached with few requests.
INGRESS_MEMORY_BUDGET = 160 << 20
INGRESS_BODY_READ_TIMEOUT_S = 3


@dataclass(frozen=True)
class IngressKeys:
    clinic: str = field(repr=False)  # classify + read
    other: str = field(repr=False)  # classify, another client
    feedback: str = field(repr=False)  # feedback only: no classify scope
    reader: str = field(repr=False)  # read only
    admin: str = field(repr=False)  # every scope: may promote and roll back the student


class IngressServer(HostileServer):
    body_read_timeout_s = INGRESS_BODY_READ_TIMEOUT_S

    def __init__(self, url, process, log_path, keys: IngressKeys, model: str) -> None:
        super().__init__(url, process, log_path)
        self.keys = keys
        self.model = model


@pytest.fixture(scope="session")
def ingress_server(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, repo_root: Path) -> Iterator:
    bundles = build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)
    workdir = tmp_path_factory.mktemp("ingress-server")
    env = _service_env(
        bundles["student"],
        workdir,
        repo_root,
        KDOCT_MAX_QUEUE="4",
        KDOCT_MEMORY_BUDGET_BYTES=str(INGRESS_MEMORY_BUDGET),
        KDOCT_BODY_READ_TIMEOUT_S=str(INGRESS_BODY_READ_TIMEOUT_S),
        KDOCT_AUDIT_KEY_FILE=str(workdir / "audit.key"),
        KDOCT_ANCHOR_FILE=str(workdir / "anchors.jsonl"),
        KDOCT_AUTH="enabled",
    )

    def cli(*args: str) -> str:
        return _cli(env, workdir, *args)

    cli("db", "upgrade")
    keys = IngressKeys(
        clinic=cli("apikey", "create", "clinic", "--scopes", "classify", "read"),
        other=cli("apikey", "create", "other", "--scopes", "classify"),
        feedback=cli("apikey", "create", "feedback-only", "--scopes", "feedback"),
        reader=cli("apikey", "create", "reader", "--scopes", "read"),
        admin=cli("apikey", "create", "ops", "--scopes", "admin"),
    )
    model = json.loads((bundles["student"] / "bundle.json").read_text())["name"]
    log_path = workdir / "server.log"
    with running_service(env, workdir, log_path, ready_timeout_s=120, stop_timeout_s=20) as service:
        yield IngressServer(service.url, service.process, log_path, keys, model)


# The DICOM node's suite (tests/hostile/test_hostile_dicom.py): a small memory budget, so that one large
# instance is over it whatever the load.
DICOM_MEMORY_BUDGET = 96 << 20


@pytest.fixture(scope="module")
def dicom_node(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, repo_root: Path) -> Iterator:
    """`python -m service dicom-node` on tiny real bundles, SQLite records, three callers."""
    bundles = build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)
    workdir = tmp_path_factory.mktemp("hostile-dicom")
    env = _service_env(
        bundles["student"],
        workdir,
        repo_root,
        KDOCT_AUTH="disabled",
        KDOCT_MEMORY_BUDGET_BYTES=str(DICOM_MEMORY_BUDGET),
        KDOCT_AUDIT_KEY_FILE=str(workdir / "audit.key"),
        KDOCT_ANCHOR_FILE=str(workdir / "anchors.jsonl"),
        KDOCT_DICOM_CALLERS="TESTPACS,OTHER@127.0.0.1,FARAWAY@10.9.8.7",
        KDOCT_DICOM_STORE_DIR=str(workdir / "store"),
        KDOCT_DICOM_SERIES_IDLE_S="2",
    )
    _cli(env, workdir, "db", "upgrade")
    with running_node(env, workdir, workdir / "node.log") as running:
        yield running
