"""The service under test: `python -m service serve` in a subprocess, its database prepared, its
processes observable (pids, RSS) and stoppable with the signals an orchestrator sends.

The mechanics (a free port, start, wait for /health/ready, stop) are shared with the tests
(tests/e2e, tests/hostile, tests/deploy), which keep their own settings and pass them in `env`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from bench.bundles import REPO_ROOT

__all__ = [
    "ServiceNotReady",
    "RunningService",
    "ServiceProcess",
    "free_port",
    "records_wired",
    "rss_bytes",
    "running_service",
    "start_service",
    "stop_service",
    "wait_until_ready",
]


class ServiceNotReady(RuntimeError):
    """The service exited, or /health/ready did not answer 200 in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(
    env: dict[str, str],
    cwd: Path,
    port: int,
    log_path: Path,
    *,
    args: Sequence[str] = (),
    append_log: bool = False,
) -> subprocess.Popen:
    """`python -m service serve --port PORT ARGS` in the background, stdout and stderr into `log_path`
    (appended to, for a service restarted in the same directory, when `append_log`)."""
    with open(log_path, "ab" if append_log else "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _log_tail(log_path: Path, chars: int = 3000) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


def wait_until_ready(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> float:
    """Seconds until `url`/health/ready answered 200; ServiceNotReady (with the log tail) when the
    process exits first or `timeout_s` passes."""
    began = time.monotonic()
    while True:
        if process.poll() is not None:
            raise ServiceNotReady(f"service exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        if time.monotonic() - began > timeout_s:
            raise ServiceNotReady(f"service not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}")
        time.sleep(0.2)


def stop_service(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (the service drains), then SIGKILL after `timeout_s`; returns the exit status."""
    if process.poll() is not None:
        return process.returncode
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class RunningService(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen


@contextmanager
def running_service(
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    *,
    ready_timeout_s: float,
    stop_timeout_s: float = 30.0,
    args: Sequence[str] = (),
) -> Iterator[RunningService]:
    """A service started with `env` on a free port, ready; stopped on the way out."""
    port = free_port()
    process = start_service(env, cwd, port, log_path, args=args)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(process, url, log_path, ready_timeout_s)
        yield RunningService(url, process)
    finally:
        stop_service(process, stop_timeout_s)


def records_wired() -> bool:
    """Whether the app writes predictions to the database (the records issue's DurableWriter) rather
    than to the in-memory sink the service started with."""
    return "build_records" in (REPO_ROOT / "service" / "app.py").read_text()


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _service_command(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"python -m service {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout.strip()


class ServiceProcess:
    """One service (1..n uvicorn workers). `database_url` None = the in-memory sink (no records)."""

    def __init__(
        self,
        student_bundle: Path,
        workdir: Path,
        *,
        database_url: str | None = None,
        workers: int = 1,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.database_url = database_url
        self.api_key: str | None = None
        self.process: subprocess.Popen | None = None
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
        self.env.update(
            KDOCT_STUDENT_BUNDLE=str(student_bundle),
            KDOCT_SECOND_OPINION="never",
            KDOCT_LOG_LEVEL="warning",
            KDOCT_WORKERS=str(workers),
            KDOCT_SPOOL_DIR=str(workdir / "spool"),
            PYTHONPATH=str(REPO_ROOT),
        )
        if database_url is not None:
            self.env["KDOCT_DATABASE_URL"] = database_url
        self.env.update(settings or {})

    def prepare_records(self) -> None:
        """Schema and an API key with the classify scope (when the records work is wired in)."""
        if self.database_url is None or not records_wired():
            self.env.setdefault("KDOCT_AUTH", "disabled")
            return
        self.env.setdefault("KDOCT_AUTH", "enabled")
        _service_command("db", "upgrade", env=self.env, cwd=self.workdir)
        name = f"bench-{uuid.uuid4().hex[:8]}"
        self.api_key = (
            _service_command(
                "apikey", "create", name, "--scopes", "classify", "read", env=self.env, cwd=self.workdir
            )
            .splitlines()[-1]
            .strip()
        )

    def start(self, timeout_s: float = 180.0) -> ServiceProcess:
        self.prepare_records()
        self.process = start_service(self.env, self.workdir, self.port, self.log_path, append_log=True)
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /health/ready answered 200."""
        return wait_until_ready(self.process, self.url, self.log_path, timeout_s)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (the server itself when it runs one worker)."""
        children = [pid for pid in _children(self.pid) if "resource_tracker" not in self._cmdline(pid)]
        return children or [self.pid]

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        return rss_bytes(self.pid) + sum(rss_bytes(pid) for pid in _children(self.pid))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        return stop_service(self.process, timeout_s) if self.process is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        return _log_tail(self.log_path, chars)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
