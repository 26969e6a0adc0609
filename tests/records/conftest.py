"""Fixtures for the records tests: real PostgreSQL (a throwaway database per session, a throwaway
cluster for outage tests), migrated SQLite files, and prediction records."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from service.db.migrate import upgrade
from service.db.session import make_engine
from service.records import PredictionRecord

SERVER = os.environ.get("KDOCT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_BIN = Path(os.environ.get("KDOCT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _with_database(server_url: str, database: str) -> str:
    base = server_url.rsplit("/", 1)[0]
    return f"{base}/{database}".replace("postgresql://", "postgresql+psycopg://", 1)


def create_database(server_url: str = SERVER) -> tuple[str, str]:
    """A new empty database; returns (name, SQLAlchemy URL)."""
    name = f"kdoct_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, _with_database(server_url, name)


def drop_database(name: str, server_url: str = SERVER) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory owned by the postgres user (initdb refuses
    to run as root), listening on 127.0.0.1 at a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kdoct-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "log", "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                PG_BIN / "pg_ctl",
                "-D",
                self.data,
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_postgres(self, *command) -> None:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, command)],
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr or result.stdout}")


def make_record(**overrides) -> PredictionRecord:
    payload = os.urandom(32)
    values = dict(
        id=uuid.uuid4(),
        request_id=uuid.uuid4().hex,
        model_name="kdoct-student",
        model_version="0.1.0",
        model_sha256="a" * 64,
        input_sha256=hashlib.sha256(payload).hexdigest(),
        format="jpeg",
        width=512,
        height=496,
        probabilities={"normal": 0.7, "drusen": 0.2, "cnv": 0.1},
        label="normal",
        confidence=0.7,
        refer=False,
        timing_ms={"decode": 1.25, "queue": 0.1, "inference": 8.0, "total": 9.5},
        created_at=datetime.now(UTC),
    )
    values.update(overrides)
    return PredictionRecord(**values)


@pytest.fixture
def record_factory():
    return make_record


@pytest.fixture
def make_rows():
    """n prediction rows as the chain takes them."""
    from service.db.rows import row_from_record

    return lambda n: [row_from_record(make_record()) for _ in range(n)]


@pytest.fixture
def pg_fresh_url() -> Iterator[str]:
    """An empty PostgreSQL database (no schema), dropped afterwards."""
    name, url = create_database()
    yield url
    drop_database(name)


@pytest.fixture
def pg_url(pg_fresh_url: str) -> str:
    """A migrated PostgreSQL database of this test's own."""
    upgrade(pg_fresh_url)
    return pg_fresh_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Each test that takes it runs on both databases."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayCluster]:
    """A PostgreSQL cluster of the tests' own, safe to stop and restart."""
    cluster = ThrowawayCluster()
    cluster.start()
    yield cluster
    cluster.destroy()
