"""The service the benchmarks measure: `python -m service serve` in a subprocess with the benchmark
bundle, its database prepared (schema and an API key), its worker processes and memory observable and
stoppable with the signals an orchestrator sends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from bench.bundles import REPO_ROOT
from kdoct_testing.memory import child_pids, rss_bytes
from kdoct_testing.server import free_port, log_tail, start_service, stop_service, wait_until_ready

__all__ = ["ServiceProcess"]


def _service_command(*args: str, env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"python -m service {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout.strip()


class ServiceProcess:
    """One service (1..n uvicorn workers). `database_url` None = the default SQLite database, auth off."""

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
        """Schema and an API key with the classify scope (without a database URL: the local default,
        auth off)."""
        if self.database_url is None:
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
        children = [pid for pid in child_pids(self.pid) if "resource_tracker" not in self._cmdline(pid)]
        return children or [self.pid]

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            return ""

    def rss(self) -> int:
        """Resident memory of the server and its workers (a process that exits meanwhile counts 0)."""
        total = 0
        for pid in (self.pid, *child_pids(self.pid)):
            with contextlib.suppress(ProcessLookupError):
                total += rss_bytes(pid)
        return total

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        return stop_service(self.process, timeout_s) if self.process is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
