"""Throwaway PostgreSQL for tests: a database of a test's own on the shared server, or a whole cluster
(initdb + pg_ctl on a free port) that a test may stop and restart. Shared by tests/records and
tests/e2e (which puts this directory on sys.path)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

__all__ = ["PG_BIN", "SERVER", "ThrowawayCluster", "create_database", "drop_database", "free_port"]

SERVER = os.environ.get("KDOCT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _newest_postgresql_bin() -> str:
    """Debian installs each major version side by side; the newest one's initdb and pg_ctl."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return str(versions[-1]) if versions else "/usr/lib/postgresql/15/bin"


PG_BIN = Path(os.environ.get("KDOCT_PG_BIN") or _newest_postgresql_bin())


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
