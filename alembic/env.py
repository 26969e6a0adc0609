"""Alembic environment: the URL comes from `-x url=...`, a URL set on the config by
`python -m service db upgrade`, or KDOCT_DATABASE_URL (environment or .env)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.db.migrate import migration_lock
from service.db.session import database_url_from_env, make_engine
from service.db.tables import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("database_url")
        or database_url_from_env()
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # handed in by a caller that owns the connection (tests, the CLI)
        _run(connection)
        return
    url = _database_url()
    engine = make_engine(url)
    # Workers or replicas migrating at once would race on the first CREATE TABLE: one at a time.
    try:
        with migration_lock(url), engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
