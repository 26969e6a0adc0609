"""What the record writers report (WriterObserver), and the service's observer of it: the Prometheus
metrics declared in service/prometheus.py (MetricsObserver)."""

from __future__ import annotations

from typing import Protocol

from service import prometheus

__all__ = ["MetricsObserver", "NullObserver", "WriterObserver"]


class WriterObserver(Protocol):
    """Where a writer reports what the metrics show (MetricsObserver in the service). The last two
    came later: an observer without them is still taken (they then report nothing)."""

    def db_write(self, seconds: float, rows: int) -> None: ...
    def db_failure(self) -> None: ...
    def spool_backlog(self, rows: int) -> None: ...
    def spool_quarantined(self, reason: str, count: int) -> None: ...
    def writer_restarted(self, task: str) -> None: ...


class NullObserver:
    """Reports nothing; subclass it to observe only some figures."""

    def db_write(self, seconds: float, rows: int) -> None:
        pass

    def db_failure(self) -> None:
        pass

    def spool_backlog(self, rows: int) -> None:
        pass

    def spool_quarantined(self, reason: str, count: int) -> None:
        pass

    def writer_restarted(self, task: str) -> None:
        pass


class MetricsObserver:
    def db_write(self, seconds: float, rows: int) -> None:
        prometheus.DB_WRITE_DURATION.observe(seconds)

    def db_failure(self) -> None:
        prometheus.DB_WRITE_FAILURES.inc()

    def spool_backlog(self, rows: int) -> None:
        prometheus.SPOOL_BACKLOG.set(rows)

    def spool_quarantined(self, reason: str, count: int) -> None:
        prometheus.SPOOL_QUARANTINED.labels(reason=reason).inc(count)

    def writer_restarted(self, task: str) -> None:
        prometheus.RECORD_WRITER_RESTARTS.labels(task=task).inc()
