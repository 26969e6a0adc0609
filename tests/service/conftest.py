"""Fixtures of the service tests: real bundles (session-wide), settings and a running app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kdoct_testing.bundles import build_tiny_bundles
from service.app import create_app
from service.config import Settings, load_settings


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Path]:
    return build_tiny_bundles(tmp_path_factory.getbasetemp() / "kdoct-bundles", sample_dir)


@pytest.fixture(scope="session")
def jpeg_paths(sample_jpegs: dict[str, list[Path]]) -> list[Path]:
    """A few real B-scans of every class."""
    return [path for paths in sample_jpegs.values() for path in paths[:2]]


@pytest.fixture
def make_settings(bundles, monkeypatch):
    # Settings must come from the test alone, not from a developer's .env or environment.
    monkeypatch.chdir(bundles["student"].parent)
    for field in Settings.model_fields:
        monkeypatch.delenv(f"KDOCT_{field.upper()}", raising=False)

    def make(**overrides):
        values = {
            "student_bundle": bundles["student"],
            "teacher_bundle": bundles["teacher"],
            "decode_threads": 1,
            # Auth has its own tests (tests/service/db); these exercise inference on a local SQLite.
            "auth": "disabled",
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def client(make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
