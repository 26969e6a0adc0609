"""Static checks of docker/Dockerfile and .dockerignore, and real runs of the entrypoint's helpers."""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


@pytest.fixture(scope="module")
def dockerfile(docker_dir: Path) -> list[tuple[str, str]]:
    return _instructions(docker_dir / "Dockerfile")


def _copy_sources(arguments: str) -> list[str]:
    words = [word for word in shlex.split(arguments) if not word.startswith("--")]
    return words[:-1]


def test_dockerfile_is_multi_stage_and_the_runtime_takes_only_the_venv(dockerfile) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "build and runtime stages expected"
    runtime = stages[-1]
    copies_from_build = [args for keyword, args in runtime if keyword == "COPY" and "--from=build" in args]
    assert copies_from_build == ["--from=build /opt/venv /opt/venv"]
    assert not any(keyword == "RUN" and "pip install" in args for keyword, args in runtime), (
        "packages are installed in the build stage only"
    )


def test_runtime_runs_as_a_non_root_user(dockerfile) -> None:
    runtime = _stages(dockerfile)[-1]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    keywords = [keyword for keyword, _ in runtime]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_healthcheck_probes_liveness_not_readiness(dockerfile) -> None:
    checks = [args for keyword, args in dockerfile if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health/live" in checks[0] and "/health/ready" not in checks[0]


def test_bundles_are_never_copied_into_the_image(dockerfile, repo_root: Path) -> None:
    forbidden = re.compile(r"bundle|\.onnx|\.safetensors|(^|/)(var|runs|data)(/|$)", re.IGNORECASE)
    for keyword, arguments in dockerfile:
        assert keyword != "ADD", "use COPY: ADD fetches URLs and unpacks archives implicitly"
        if keyword == "COPY" and "--from=" not in arguments:
            for source in _copy_sources(arguments):
                assert not forbidden.search(source), (
                    f"COPY {source}: bundles and data are mounted, not copied"
                )
                assert (repo_root / source).exists(), f"COPY {source}: no such file in the repository"


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies(dockerfile, repo_root: Path) -> None:
    patterns = [
        line.strip() for line in (repo_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:  # later patterns win, as in Docker
            negated = pattern.startswith("!")
            body = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
            if (
                fnmatch.fnmatch(path, body)
                or path.startswith(body + "/")
                or fnmatch.fnmatch(Path(path).name, body)
            ):
                verdict = not negated
        return verdict

    sources = [s for k, a in dockerfile if k == "COPY" and "--from=" not in a for s in _copy_sources(a)]
    for source in sources:
        assert not ignored(source), f".dockerignore hides {source}, which the Dockerfile copies"
    for secret_or_data in (".env", "bundles/student/model.safetensors", "var/kdoct.db", "runs/x/model.onnx"):
        assert ignored(secret_or_data), f".dockerignore must keep {secret_or_data} out of the build context"


def test_torch_pins_match_pyproject(docker_dir: Path, repo_root: Path) -> None:
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    pins = dict(dep.split("==") for dep in pyproject["project"]["dependencies"] if "==" in dep)
    text = (docker_dir / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}" in text
    assert f"ARG TORCHVISION_VERSION={pins['torchvision']}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_entrypoint_is_valid_posix_sh_and_execs_the_server(docker_dir: Path, tool) -> None:
    entrypoint = docker_dir / "entrypoint.sh"
    assert entrypoint.stat().st_mode & 0o111, "entrypoint.sh must be executable"
    # The slim image's /bin/sh is dash: no bashisms.
    lint = subprocess.run([tool("shellcheck"), "-s", "sh", str(entrypoint)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    text = entrypoint.read_text()
    assert "set -eu" in text
    assert re.search(r"^\s*exec python -m service serve", text, re.MULTILINE), "serve must exec (signals)"
    assert re.search(r"^\s*exec python -m service dicom-node", text, re.MULTILINE), "the node must exec"
    for verb in ("serve", "dicom-node"):
        branch = text[text.index(f"    {verb})") : text.index(";;", text.index(f"    {verb})"))]
        steps = ("refuse_owner_url", "wait_and_migrate", "reset_metrics_dir", "exec python")
        order = [branch.index(step) for step in steps]
        assert order == sorted(order), f"{verb}: refuse the owner, wait for the database and migrate first"
    assert "upgrade head" in text


# ---- the entrypoint's helpers, run for real


def _wait_for_db(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[2] / "docker" / "wait_for_db.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.postgres
def test_wait_for_db_returns_at_once_when_postgres_answers() -> None:
    result = _wait_for_db("--url", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert "reachable after 1 attempt" in result.stderr


def test_wait_for_db_gives_up_at_the_deadline_without_showing_the_password() -> None:
    url = "postgresql+psycopg://kdoct:s3cret-pw@127.0.0.1:1/kdoct"
    result = _wait_for_db("--url", url, "--timeout", "1.5", "--interval", "0.5")
    assert result.returncode == 1
    assert "still unreachable after 2 s" in result.stderr or "still unreachable after 1 s" in result.stderr
    assert "s3cret-pw" not in result.stderr and "***" in result.stderr


def test_wait_for_db_rejects_a_malformed_url_and_skips_sqlite() -> None:
    assert _wait_for_db("--url", "not a url").returncode == 2
    assert _wait_for_db("--url", "sqlite:///./var/kdoct.db").returncode == 0


@pytest.mark.parametrize(("verb", "refusal"), [("serve", "serve"), ("dicom-node", "run the DICOM node")])
def test_servers_refuse_the_owners_credentials_in_their_environment(
    docker_dir: Path, tmp_path: Path, verb: str, refusal: str
) -> None:
    """The owner's URL in the server's environment is in /proc/<pid>/environ of the master and every
    worker (issue 23, case 5): `serve` and `dicom-node` refuse it before waiting for the database or
    starting anything. The database is unreachable, so code that does not refuse gives up waiting for it
    instead."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "KDOCT_DATABASE_URL": "postgresql+psycopg://kdoct_app:runtime-pw@127.0.0.1:1/kdoct",
        "KDOCT_MIGRATION_DATABASE_URL": "postgresql+psycopg://kdoct:owner-pw@127.0.0.1:1/kdoct",
        "KDOCT_DB_WAIT_SECONDS": "1",
    }
    result = subprocess.run(
        ["sh", str(docker_dir / "entrypoint.sh"), verb],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"refusing to {refusal} with KDOCT_MIGRATION_DATABASE_URL" in result.stderr
    assert "owner-pw" not in result.stderr + result.stdout


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_healthcheck_script_reports_2xx_as_healthy_and_anything_else_not(
    status_server: str, docker_dir: Path
) -> None:
    def check(url: str) -> int:
        command = [sys.executable, str(docker_dir / "healthcheck.py"), url]
        return subprocess.run(command, capture_output=True, timeout=20).returncode

    assert check(f"{status_server}/health/live") == 0
    assert check(f"{status_server}/health/ready") == 1
    assert check("http://127.0.0.1:1/health/live") == 1
