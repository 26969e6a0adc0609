"""Fixtures every test directory may use. Directory-specific fixtures live in that directory's conftest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sample_dir() -> Path:
    return Path(os.environ.get("KDOCT_SAMPLE_DIR", REPO_ROOT / "data" / "oct2017-sample"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real OCT2017 sample in the repository (683 B-scans, DME too); KDOCT_SAMPLE_DIR overrides it."""
    path = _sample_dir()
    if not (path / "manifest.csv").is_file():
        pytest.fail(f"real OCT sample not found at {path}: set KDOCT_SAMPLE_DIR")
    return path


@pytest.fixture(scope="session")
def sample_jpegs(sample_dir: Path) -> dict[str, list[Path]]:
    """Real JPEGs by class folder name (CNV, DME, DRUSEN, NORMAL), sorted."""
    return {c: sorted((sample_dir / c).glob("*.jpeg")) for c in ("CNV", "DME", "DRUSEN", "NORMAL")}


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, reports)."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
