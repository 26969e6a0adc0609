"""The DurableWriter's figures, as the Prometheus metrics declared in service/prometheus.py."""

from __future__ import annotations

from service import prometheus

__all__ = ["MetricsObserver"]


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
