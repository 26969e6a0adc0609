"""Migrations: upgrade/downgrade on SQLite and PostgreSQL, and the models agree with them."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db.migrate import downgrade, upgrade
from service.db.session import make_engine
from service.db.tables import Base

RECORD_TABLES = {
    "predictions",
    "api_clients",
    "feedback",
    "chain_epochs",
    "dicom_export_attempts",
    "shadow_results",
    "model_events",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return request.getfixturevalue("pg_fresh_url")


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= RECORD_TABLES
    downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == {"alembic_version"}
    upgrade(empty_db_url)
    assert _tables(empty_db_url) >= RECORD_TABLES


def test_models_and_migrations_agree(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_concurrent_upgrades_of_one_sqlite_file_all_succeed(tmp_path, repo_root) -> None:
    """What several uvicorn workers do at start-up: migrate the same embedded store at once."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = "import sys; from service.db.migrate import upgrade; upgrade(sys.argv[1])"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, url], cwd=repo_root, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    errors = [worker.communicate(timeout=60)[1] for worker in workers]
    failures = [error for worker, error in zip(workers, errors, strict=True) if worker.returncode != 0]
    assert failures == []
    assert _tables(url) >= RECORD_TABLES
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == "0008"
    finally:
        engine.dispose()
