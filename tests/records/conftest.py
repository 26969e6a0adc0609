"""Fixtures for the records tests: real PostgreSQL (a throwaway database per session, a throwaway
cluster for outage tests), migrated SQLite files, and prediction records."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from kdoct_testing.postgres import ThrowawayCluster, create_database, drop_database, libpq_url
from service.db.migrate import upgrade
from service.db.session import make_engine


def make_record(**overrides) -> dict[str, Any]:
    """The values of one predictions row, as service.records.prediction_rows derives them."""
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
        client_id=None,
        teacher_model_name=None,
        teacher_model_version=None,
        teacher_model_sha256=None,
        frame_index=None,
        volume_id=None,
        second_opinion=None,
    )
    values.update(overrides)
    return values


@pytest.fixture
def record_factory():
    return make_record


@pytest.fixture
def make_rows():
    """n prediction rows as the chain takes them."""
    from service.db.rows import normalise_row

    return lambda n: [normalise_row(make_record()) for _ in range(n)]


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
def runtime_url(pg_url: str) -> Iterator[str]:
    """pg_url (migrated by its owner) as seen by a fresh login role that is a member of kdoct_runtime:
    what the service logs in as."""
    import psycopg
    from sqlalchemy.engine import make_url

    role = f"kdoct_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE kdoct_runtime')
    url = make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


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
    cluster = ThrowawayCluster(fsync=False)
    cluster.start()
    yield cluster
    cluster.destroy()
