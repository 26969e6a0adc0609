"""Fixtures for the records tests: real PostgreSQL (a throwaway database per session, a throwaway
cluster for outage tests), migrated SQLite files, and prediction records."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from kdoct_testing.postgres import ThrowawayCluster, create_database, drop_database, libpq_url
from kdoct_testing.records import make_record
from service.db.migrate import upgrade
from service.db.session import make_engine


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
