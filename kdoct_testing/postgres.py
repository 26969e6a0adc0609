"""Throwaway PostgreSQL, for the benchmarks and the tests: a database of one's own on the shared server
(`create_database` / `drop_database`), or a whole cluster (initdb + pg_ctl on a free port) that a fault
benchmark or an outage test may stop and start without touching the shared server. initdb refuses
root: as root, the cluster runs as the postgres user."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from kdoct_testing.server import free_port

__all__ = ["PG_BIN", "SERVER", "ThrowawayCluster", "create_database", "drop_database", "libpq_url"]

# The shared server the throwaway databases are made on (a libpq URL of any database there).
SERVER = os.environ.get("KDOCT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _newest_postgresql_bin() -> str:
    """Debian installs each major version side by side; the newest one's initdb and pg_ctl."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return str(versions[-1]) if versions else "/usr/lib/postgresql/15/bin"


PG_BIN = Path(os.environ.get("KDOCT_PG_BIN") or _newest_postgresql_bin())


def _with_database(server_url: str, database: str) -> str:
    base = server_url.rsplit("/", 1)[0]
    return f"{base}/{database}".replace("postgresql://", "postgresql+psycopg://", 1)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg and libpq take it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def create_database(server_url: str = SERVER, *, prefix: str = "kdoct_test_") -> tuple[str, str]:
    """A new empty database on `server_url`'s server; returns (name, SQLAlchemy URL).
    psycopg.OperationalError when the server cannot be reached."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, _with_database(server_url, name)


def drop_database(name: str, server_url: str = SERVER) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 at a free port.

    fsync=False makes it faster for tests that only stop and restart it; benchmarks that measure
    what durable writes cost keep fsync on."""

    def __init__(self, *, fsync: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kdoct-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.fsync = fsync
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.libpq_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.fsync:
            options += " -c fsync=off"
        self._pg("pg_ctl", "-D", self.data, "-o", options, "-l", self.root / "log", "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg(self, program: str, *args) -> None:
        command = [str(PG_BIN / program), *map(str, args)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()
