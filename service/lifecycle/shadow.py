"""Shadow: a candidate student scores a share of live requests off the answer path.

The pipeline hands every answer and its prepared input to `Shadow.offer` (service/pipeline.py), which
returns at once: the answer goes out unchanged, its latency never waits on the candidate. Sampled
requests (KDOCT_SHADOW_SHARE, decided from the prediction id, so a replayed request samples alike) are
classified by the candidate under the same rules as the student (service/inference/classifier.py:
its own preprocessing and safety gate, its own batcher), within KDOCT_SHADOW_TIMEOUT_S, at most
KDOCT_SHADOW_MAX_PENDING at once per worker, and only while no request waits for the serving student
(on a CPU the candidate's forward takes the cores the answers need: under load it yields); a request
not shadowed is counted (`busy`). A failure or timeout is counted and logged, never raised to anyone.

Each result is a row of the shadow_results ledger beside the prediction it shadows (service/db/
ledger.py: append-only, chained with the audit key), one per answered result (each frame of a
volume, and the volume), written in batches off the event loop. The rows are evidence for a
promotion, not clinical records: while the database is down they are dropped and counted
(`kdoct_shadow_results_total{outcome="not_stored"}`), never spooled ahead of the predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service import prometheus
from service.answer import ClassifyResponse
from service.audit_key import AuditKey
from service.db.model_ledgers import shadow_counts, store_shadow_results
from service.inference.batcher import BatcherClosed, QueueFull
from service.inference.classifier import Classification, Classifier, Result
from service.intake import Prepared
from service.lifecycle.agreement import ShadowCount, summarise

__all__ = ["Shadow"]

log = logging.getLogger(__name__)

_WRITE_BATCH = 256
_GAUGE_REFRESH_S = 15.0


class Shadow:
    def __init__(
        self,
        candidate: Classifier,
        *,
        engine: Engine,
        key: AuditKey,
        share: float,
        timeout_s: float,
        max_pending: int,
        answers_waiting: Callable[[], bool] = lambda: False,
    ) -> None:
        # The candidate as a classifier of its own: the student's rules, no teacher (policy never).
        self.candidate = candidate
        self.identity = candidate.student.loaded.identity()
        self.sha256 = self.identity["sha256"]
        self.class_names = candidate.student.loaded.class_names
        self._engine, self._key = engine, key
        self._share_in_10k = round(share * 10_000)
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        # True while requests wait for the serving student: the candidate then yields its turn.
        self._answers_waiting = answers_waiting
        self._running: set[asyncio.Task] = set()
        self._rows: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_pending * 64)
        self._writer: asyncio.Task | None = None
        self._gauges_at = 0.0

    # From the pipeline ---------------------------------------------------------------------------

    def offer(self, prepared: Prepared, answer: ClassifyResponse) -> None:
        """Shadow this answer's request when sampled; returns at once, whatever happens next."""
        if answer.model.sha256 == self.sha256:
            return  # the candidate is serving already (promoted): nothing to compare
        if uuid.UUID(answer.prediction_id).int % 10_000 >= self._share_in_10k:
            return
        if len(self._running) >= self._max_pending:
            self._count("busy")
            return
        task = asyncio.create_task(self._shadow(prepared, answer), name="kdoct-shadow")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # The shadow's own work -----------------------------------------------------------------------

    async def _shadow(self, prepared: Prepared, answer: ClassifyResponse) -> None:
        if self._answers_waiting():
            # The candidate's forward would take the cores those answers need (on a CPU, the same
            # ones): under load a request is not shadowed rather than an answer delayed.
            self._count("busy")
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self.candidate.classify(prepared, "never")
        except TimeoutError:
            self._count("timeout")
            return
        except (QueueFull, BatcherClosed):
            self._count("busy")
            return
        except Exception:  # noqa: BLE001  (a candidate's failure never reaches anyone)
            log.exception("shadow %s failed on prediction %s", self.sha256[:12], answer.prediction_id)
            self._count("failed")
            return
        for row in self._rows_of(answer, result):
            self._compare(row)
            try:
                self._rows.put_nowait(row)
            except asyncio.QueueFull:
                self._count("not_stored")

    def _rows_of(self, answer: ClassifyResponse, result: Classification) -> list[dict[str, Any]]:
        """One row per answered result, paired with the candidate's result of the same input."""
        pairs: list[tuple[Any, Result]] = []
        if answer.frames:
            pairs += list(zip(answer.frames, result.frames, strict=True))
            if result.volume is not None:
                pairs.append((answer, result.volume))
        else:
            pairs.append((answer, result.frames[0]))
        now = datetime.now(UTC)
        return [
            {
                "id": uuid.uuid4(),
                "created_at": now,
                "prediction_id": uuid.UUID(current.prediction_id),
                "candidate_name": self.identity["name"],
                "candidate_version": self.identity["version"],
                "candidate_sha256": self.sha256,
                "current_sha256": answer.model.sha256,
                "current_label": current.label,
                "current_gradable": current.gradable,
                "teacher_label": current.second_opinion.label if current.second_opinion else None,
                "candidate_label": candidate.label,
                "candidate_probabilities": dict(candidate.probabilities),
                "candidate_confidence": candidate.confidence,
                "candidate_gradable": candidate.gradable,
                "candidate_reason": candidate.reason,
            }
            for current, candidate in pairs
        ]

    def _compare(self, row: dict[str, Any]) -> None:
        agrees = "true" if row["current_label"] == row["candidate_label"] else "false"
        prometheus.SHADOW_COMPARISONS.labels(
            candidate=self.sha256, current_label=row["current_label"],
            candidate_label=row["candidate_label"], agrees=agrees,
        ).inc()  # fmt: skip
        if row["teacher_label"] is not None:
            agrees = "true" if row["teacher_label"] == row["candidate_label"] else "false"
            prometheus.SHADOW_TEACHER_COMPARISONS.labels(candidate=self.sha256, agrees=agrees).inc()
        prometheus.SHADOW_GATE.labels(
            candidate=self.sha256, current=_verdict(row["current_gradable"]),
            shadow=_verdict(row["candidate_gradable"]),
        ).inc()  # fmt: skip

    def _count(self, outcome: str, amount: int = 1) -> None:
        prometheus.SHADOW_RESULTS.labels(candidate=self.sha256, outcome=outcome).inc(amount)

    # Writing the ledger --------------------------------------------------------------------------

    def start(self) -> None:
        for outcome in prometheus.SHADOW_OUTCOMES:
            prometheus.SHADOW_RESULTS.labels(candidate=self.sha256, outcome=outcome)
        self._writer = asyncio.create_task(self._write(), name="kdoct-shadow-writer")

    async def _write(self) -> None:
        while True:
            rows = [await self._rows.get()]
            while len(rows) < _WRITE_BATCH and not self._rows.empty():
                rows.append(self._rows.get_nowait())
            await self._store(rows)

    async def _store(self, rows: list[dict[str, Any]]) -> None:
        try:
            await asyncio.to_thread(store_shadow_results, self._engine, rows, key=self._key)
        except SQLAlchemyError as exc:
            log.warning("%d shadow results not stored: %s", len(rows), type(exc).__name__)
            self._count("not_stored", len(rows))
            return
        self._count("stored", len(rows))
        if time.monotonic() - self._gauges_at >= _GAUGE_REFRESH_S:
            await self.refresh_gauges()

    async def refresh_gauges(self) -> None:
        """Agreement and kappa over every worker's stored results (the ledger), as gauges: each worker
        reports the same figure, and the multiprocess collector keeps the highest."""
        self._gauges_at = time.monotonic()
        try:
            counts = await asyncio.to_thread(shadow_counts, self._engine, self.sha256)
        except SQLAlchemyError:
            return
        agreement = summarise([ShadowCount(*row) for row in counts], self.class_names)
        for against, share, kappa in (
            ("student", agreement.agreement, agreement.kappa),
            ("teacher", agreement.teacher_agreement, agreement.teacher_kappa),
        ):
            if share is not None:
                prometheus.SHADOW_AGREEMENT.labels(candidate=self.sha256, against=against).set(share)
            if kappa is not None:
                prometheus.SHADOW_KAPPA.labels(candidate=self.sha256, against=against).set(kappa)

    async def stop(self, drain_timeout_s: float) -> None:
        """Let running shadows finish (until the deadline), store what is queued, stop."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=drain_timeout_s)
        for task in set(self._running):
            task.cancel()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        rows = []
        while not self._rows.empty():
            rows.append(self._rows.get_nowait())
        if rows:
            await self._store(rows)


def _verdict(gradable: bool | None) -> str:
    return "off" if gradable is None else ("gradable" if gradable else "ungradable")
