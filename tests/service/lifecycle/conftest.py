"""Fixtures of the model lifecycle's tests: candidate bundles (session-wide) and an app of a test's own,
on a SQLite file of its own (the model events there decide which student serves)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from kdoct_testing.bundles import build_candidate_bundle
from service.app import create_app
from service.db.session import make_engine
from service.db.tables import ShadowResult


@pytest.fixture(scope="session")
def candidate(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A student of the same preprocessing (64 px) with other weights."""
    return build_candidate_bundle(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)


@pytest.fixture(scope="session")
def candidate_72(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A student of other preprocessing (72 px)."""
    return build_candidate_bundle(
        tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir, input_size=(72, 72)
    )


@pytest.fixture
def lifecycle_app(make_settings, tmp_path) -> Callable:
    """`with lifecycle_app(**settings) as client:` an app on tmp_path's own SQLite and audit files."""

    @contextmanager
    def run(**overrides) -> Iterator[TestClient]:
        values = {
            "database_url": f"sqlite:///{tmp_path / 'records.db'}",
            "spool_dir": tmp_path / "spool",
            "audit_key_file": tmp_path / "audit" / "audit.key",
            "anchor_file": tmp_path / "audit" / "anchors.jsonl",
            "second_opinion": "never",
            **overrides,
        }
        with TestClient(create_app(make_settings(**values))) as client:
            yield client

    return run


def stored_shadow_results(database_url: str, expected: int, timeout_s: float = 30.0) -> int:
    """Wait until `expected` shadow results are stored (the shadow writes off the answer path)."""
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as conn:
                count = conn.execute(select(func.count()).select_from(ShadowResult)).scalar_one()
            if count >= expected or time.monotonic() > deadline:
                return count
            time.sleep(0.05)
    finally:
        engine.dispose()
