"""Run the Alembic migrations (alembic/ at the repository root) from Python.

Several processes may migrate the same database at once (uvicorn workers that each migrate the
embedded SQLite store at start-up, replicas running `db upgrade`): without a lock two of them read
"no alembic_version yet" and the second fails creating a table the first just made. So migrations
run under an exclusive lock: a lock file next to the SQLite database, a session advisory lock on
PostgreSQL. The one that waited then finds the schema at head and does nothing. alembic/env.py
takes the lock, so `alembic upgrade head` (docker/entrypoint.sh) is covered as well as this module.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from kdoct.errors import ConfigError
from service.db.session import is_postgresql, make_engine, normalise_url, sqlite_path
from service.private_files import open_private

__all__ = ["ALEMBIC_INI", "MIGRATION_LOCK_KEY", "alembic_config", "downgrade", "migration_lock", "upgrade"]

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
# Any fixed 64-bit number other than the hash chain's; it names "schema migrations" among advisory locks.
MIGRATION_LOCK_KEY = 0x6B646F6374_6D67  # "kdoct" "mg"


def alembic_config(database_url: str) -> Config:
    if not ALEMBIC_INI.is_file():
        raise ConfigError(
            f"{ALEMBIC_INI} not found: run from a checkout of the repository (alembic/ is not packaged)"
        )
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = normalise_url(database_url).render_as_string(hide_password=False)
    # The caller's logging stays as it is (alembic.ini would reset it).
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Held while one process migrates; others wait (in-memory SQLite needs no lock). alembic/env.py
    takes it: never call upgrade() inside it (a second holder in one process waits forever)."""
    if is_postgresql(database_url):
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
        return
    database = sqlite_path(database_url)
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + ".migrate-lock")
    with os.fdopen(open_private(lock_path, os.O_WRONLY | os.O_APPEND), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield
