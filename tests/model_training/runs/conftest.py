"""The smoke cross-validation run, trained once per session: `cv`, `oof`, `final --oof` and `ablation`
tests all read it (training it costs about a minute on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_cli import SMOKE, run_cli


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke-cv") / "run"
    result = run_cli("cv", "--config", str(SMOKE), "--out", str(out), "--set", "run_no_kd=true")
    assert result.returncode == 0, result.stderr[-3000:]
    return out
