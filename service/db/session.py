"""Engine and session factory from a database URL.

SQLite (the embedded default) runs in WAL mode with foreign keys on; a connection opened with the
execution option ``sqlite_begin="BEGIN IMMEDIATE"`` takes SQLite's write lock when its transaction
starts, which is how the hash chain serialises writers there. PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from kdoct.errors import ConfigError
from service.private_files import create_private_file

__all__ = [
    "DEFAULT_DATABASE_URL",
    "database_url_from_env",
    "is_postgresql",
    "make_engine",
    "make_sessionmaker",
    "normalise_url",
]

# The embedded default, relative to the working directory; the service's settings use it too.
DEFAULT_DATABASE_URL = "sqlite:///var/kdoct.db"
# A dead PostgreSQL must be noticed quickly so records go to the spool instead of waiting.
POSTGRES_CONNECT_TIMEOUT_S = 3
SQLITE_BUSY_TIMEOUT_S = 30


class _DatabaseSettings(BaseSettings):
    """Only the database URL, so CLI commands work without the bundles the full Settings require."""

    model_config = SettingsConfigDict(env_prefix="KDOCT_", env_file=".env", extra="ignore")
    database_url: str = DEFAULT_DATABASE_URL


def database_url_from_env() -> str:
    """KDOCT_DATABASE_URL from the environment or .env, else the embedded SQLite default."""
    return _DatabaseSettings().database_url


def normalise_url(url: str | URL) -> URL:
    """Parse a URL; plain ``postgresql://`` means psycopg 3 (SQLAlchemy would pick psycopg2)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"KDOCT_DATABASE_URL {str(url)!r} is not a database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"KDOCT_DATABASE_URL uses {parsed.get_backend_name()!r}: "
            "only sqlite:/// and postgresql:// are supported"
        )
    return parsed


def is_postgresql(url: str | URL) -> bool:
    return normalise_url(url).get_backend_name() == "postgresql"


def make_engine(
    url: str | URL,
    *,
    statement_timeout_s: float | None = None,
    lock_timeout_s: float | None = None,
    **kwargs,
) -> Engine:
    """`statement_timeout_s` / `lock_timeout_s` (PostgreSQL) bound how long one statement may run or
    wait for a lock: the service sets them so that a stalled database fails fast into the spool instead
    of holding requests; CLI commands (audits, migrations) leave them unbounded."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    connect_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    options = [
        f"-c {name}={round(seconds * 1000)}"
        for name, seconds in (("statement_timeout", statement_timeout_s), ("lock_timeout", lock_timeout_s))
        if seconds is not None
    ]
    if options:
        connect_args["options"] = " ".join(options)
    # hide_parameters: error messages must never carry row values into logs.
    return create_engine(
        parsed, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args, **kwargs
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_engine(url: URL, **kwargs) -> Engine:
    if url.database and url.database != ":memory:" and not url.query.get("uri"):
        # 0600 before SQLite makes it 0644 under the usual umask; SQLite gives its -wal, -shm and
        # -journal files the database file's mode.
        create_private_file(Path(url.database))
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    engine = create_engine(url, hide_parameters=True, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


def sqlite_path(url: str | URL) -> Path | None:
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(os.path.abspath(parsed.database))
