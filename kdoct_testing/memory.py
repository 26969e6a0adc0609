"""Memory of a running process, from /proc (Linux): resident set size, its peak, and child processes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["child_pids", "peak_rss_bytes", "reset_peak_rss", "rss_bytes"]


def _status_bytes(pid: int, field: str) -> int:
    """A size line of /proc/PID/status in bytes; ProcessLookupError when the process is gone or has no
    such line (a zombie has no memory)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(f"no {field} for process {pid}")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The highest resident memory of a process since it started or since `reset_peak_rss`."""
    return _status_bytes(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Restart the peak count at the current resident memory: a spike freed again before the next
    reading leaves RSS unchanged, but not the peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process; empty when it is gone."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
