"""The service as a subprocess: `python -m service serve` on a free port, waited for until
/health/ready answers, stopped the way an orchestrator stops it (SIGTERM, then SIGKILL). Callers pass
their own settings in `env`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

__all__ = [
    "RunningService",
    "ServiceNotReady",
    "free_port",
    "log_tail",
    "running_service",
    "start_service",
    "stop_service",
    "wait_until_ready",
]


class ServiceNotReady(RuntimeError):
    """The service exited, or /health/ready did not answer 200 in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
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


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The end of a service log ("" before the log exists)."""
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else ""


def wait_until_ready(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> float:
    """Seconds until `url`/health/ready answered 200; ServiceNotReady (with the log tail) when the
    process exits first or `timeout_s` passes."""
    began = time.monotonic()
    while True:
        if process.poll() is not None:
            raise ServiceNotReady(f"service exited with {process.returncode}:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        if time.monotonic() - began > timeout_s:
            raise ServiceNotReady(f"service not ready after {timeout_s:.0f} s:\n{log_tail(log_path)}")
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
