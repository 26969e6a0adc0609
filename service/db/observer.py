"""The DurableWriter's figures, as the Prometheus metrics declared in service/metrics.py."""

from __future__ import annotations

from service import metrics

__all__ = ["MetricsObserver"]


class MetricsObserver:
    def db_write(self, seconds: float, rows: int) -> None:
        metrics.DB_WRITE_DURATION.observe(seconds)

    def db_failure(self) -> None:
        metrics.DB_WRITE_FAILURES.inc()

    def spool_backlog(self, rows: int) -> None:
        metrics.SPOOL_BACKLOG.set(rows)

    def spool_quarantined(self, reason: str, count: int) -> None:
        metrics.SPOOL_QUARANTINED.labels(reason=reason).inc(count)

    def writer_restarted(self, task: str) -> None:
        metrics.RECORD_WRITER_RESTARTS.labels(task=task).inc()
