"""Fixtures for the records end-to-end tests: a real `python -m service serve` against PostgreSQL with
auth enabled, keys made by the operator CLI, and a throwaway cluster that a test may stop.

Imported by tests/e2e/test_records.py (fixtures are registered where they are imported). The
PostgreSQL and server mechanics come from kdoct_testing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kdoct_testing.postgres import ThrowawayCluster, create_database, drop_database
from kdoct_testing.server import running_service

SERVER_START_TIMEOUT_S = 120


@dataclass
class Keys:
    # repr=False: keys stay out of assertion messages too.
    clinic: str = field(repr=False)  # classify + read
    reader: str = field(repr=False)  # read only: no classify scope
    admin: str = field(repr=False)


@dataclass
class RecordsServer:
    url: str
    database_url: str
    log: Path
    spool_dir: Path
    metrics_dir: Path
    keys: Keys
    repo_root: Path
    audit_key_file: Path
    anchor_file: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """The CLI as the operator of this server runs it: same database, audit key and checkpoints."""
        return service_cli(
            *args,
            database_url=self.database_url,
            cwd=self.repo_root,
            KDOCT_AUDIT_KEY_FILE=str(self.audit_key_file),
            KDOCT_ANCHOR_FILE=str(self.anchor_file),
        )

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.keys.clinic}"}


def service_cli(*args: str, database_url: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    """`python -m service ARGS` as an operator runs it, with KDOCT_DATABASE_URL (and `settings`) set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(settings, KDOCT_DATABASE_URL=database_url)
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def create_key(database_url: str, cwd: Path, name: str, *scopes: str) -> str:
    created = service_cli("apikey", "create", name, "--scopes", *scopes, database_url=database_url, cwd=cwd)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def prepare_database(database_url: str, cwd: Path) -> Keys:
    migrated = service_cli("db", "upgrade", database_url=database_url, cwd=cwd)
    assert migrated.returncode == 0, migrated.stderr
    return Keys(
        clinic=create_key(database_url, cwd, "clinic", "classify", "read"),
        reader=create_key(database_url, cwd, "reader", "read"),
        admin=create_key(database_url, cwd, "ops", "admin"),
    )


@contextmanager
def serve(
    bundles: dict[str, Path],
    workdir: Path,
    database_url: str,
    keys: Keys,
    repo_root: Path,
    *,
    workers: int = 1,
    **settings: str,
) -> Iterator[RecordsServer]:
    """The service on `database_url`; `settings` (KDOCT_...=value) override the defaults below."""
    log_path = workdir / "server.log"
    spool_dir, metrics_dir = workdir / "spool", workdir / "prometheus"
    audit_key_file, anchor_file = workdir / "audit" / "audit.key", workdir / "audit" / "anchors.jsonl"
    metrics_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(bundles["student"]),
        KDOCT_TEACHER_BUNDLE=str(bundles["teacher"]),
        KDOCT_SECOND_OPINION="never",
        KDOCT_DATABASE_URL=database_url,
        KDOCT_SPOOL_DIR=str(spool_dir),
        KDOCT_AUDIT_KEY_FILE=str(audit_key_file),
        KDOCT_ANCHOR_FILE=str(anchor_file),
        # Often enough that a test sees checkpoints without waiting for shutdown.
        KDOCT_ANCHOR_INTERVAL_S="1",
        KDOCT_AUTH="enabled",
        KDOCT_MAX_BATCH_SIZE="8",
        KDOCT_MAX_BATCH_WAIT_MS="5",
        KDOCT_INFERENCE_THREADS="1",
        KDOCT_DECODE_THREADS="1",
        KDOCT_LOG_LEVEL="debug",
        # Our own directory, so a test can read each worker's metric files.
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        PYTHONPATH=str(repo_root),
    )
    env.update(settings)
    if workers == 1:
        env.pop("PROMETHEUS_MULTIPROC_DIR")
    with running_service(
        env,
        workdir,
        log_path,
        ready_timeout_s=SERVER_START_TIMEOUT_S,
        stop_timeout_s=30,
        args=("--workers", str(workers)),
    ) as service:
        yield RecordsServer(
            service.url,
            database_url,
            log_path,
            spool_dir,
            metrics_dir,
            keys,
            repo_root,
            audit_key_file,
            anchor_file,
        )


@pytest.fixture(scope="module")
def pg_server(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[RecordsServer]:
    """Two workers on a throwaway database of the shared PostgreSQL, auth on, keys from the CLI."""
    name, database_url = create_database()
    try:
        keys = prepare_database(database_url, repo_root)
        workdir = tmp_path_factory.mktemp("records-server")
        # Every test here calls from 127.0.0.1, some with a thousand bad keys: no limit on failed
        # authentications per address (tests/e2e/test_auth_limits.py tests the limit).
        with serve(
            e2e_bundles, workdir, database_url, keys, repo_root, workers=2, KDOCT_AUTH_FAILURE_LIMIT="0"
        ) as server:
            yield server
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def outage_server(
    e2e_bundles, tmp_path_factory, repo_root
) -> Iterator[tuple[RecordsServer, ThrowawayCluster]]:
    """One worker on a PostgreSQL cluster of the test's own, which the test stops and restarts."""
    cluster = ThrowawayCluster(fsync=False)
    try:
        cluster.start()
        keys = prepare_database(cluster.url, repo_root)
        workdir = tmp_path_factory.mktemp("outage-server")
        with serve(e2e_bundles, workdir, cluster.url, keys, repo_root) as server:
            yield server, cluster
    finally:
        cluster.destroy()
