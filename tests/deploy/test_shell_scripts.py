"""Every shell script of the repository (the make targets' scripts, CI's entry point, the container's)
is executable and passes shellcheck: `make test` runs scripts/test-system.sh before any test does, so
a broken one stops the suite on a fresh machine before it can report anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([ROOT / ".ci" / "run", *ROOT.glob("scripts/*.sh"), *ROOT.glob("docker/**/*.sh")])


def test_the_scripts_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in SCRIPTS}
    assert {".ci/run", "scripts/test-system.sh", "scripts/run-local.sh", "docker/entrypoint.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_script_is_executable_and_passes_shellcheck(script: Path, tool) -> None:
    assert script.stat().st_mode & 0o111, f"{script} must be executable"
    lint = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
