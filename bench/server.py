"""The service under test: `python -m service serve` in a subprocess, its database prepared, its
processes observable (pids, RSS) and stoppable with the signals an orchestrator sends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from bench.bundles import REPO_ROOT

__all__ = ["ServiceProcess", "free_port", "records_wired", "rss_bytes"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /health/ready answered 200."""
        began = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > timeout_s:
                raise RuntimeError(f"service not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

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
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
