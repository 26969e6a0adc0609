"""Rollout: every worker serves the student the newest model event names, switching at a batch boundary.

Each worker reads the newest event (service/db/model_ledgers.py) every KDOCT_MODEL_POLL_S. When it
names another bundle than the one serving, the worker loads it beside the serving one (verified, its
runtime warmed up, its golden outputs reproduced: service/inference/loaded_model.py), starts its
batcher, then swaps in one step on the event loop: the classifier's student and the intake's
preprocessing and gate. Requests already queued on the old batcher finish there (their answers name
the old model); every later request goes to the new one; the old batcher drains and stops. An event
whose bundle does not load, no longer has the sha256 promoted, or has other classes is refused,
counted and logged: the worker keeps serving, and tries again only for a newer event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from kdoct.errors import KdoctError
from service import prometheus
from service.db.model_ledgers import ModelEventRow, head_event
from service.inference.classifier import Classifier, ServedModel
from service.inference.loaded_model import LoadedModel
from service.intake import Intake

__all__ = ["Rollout"]

log = logging.getLogger(__name__)


class Rollout:
    def __init__(
        self,
        classifier: Classifier,
        intake: Intake,
        *,
        engine: Engine,
        load: Callable[[Path], LoadedModel],
        serve: Callable[[LoadedModel], ServedModel],
        on_switch: Callable[[LoadedModel, LoadedModel], None],
        poll_s: float,
        drain_timeout_s: float,
    ) -> None:
        self.classifier = classifier
        self.intake = intake
        self._engine = engine
        self._load, self._serve, self._on_switch = load, serve, on_switch
        self._poll_s = poll_s
        self._drain_timeout_s = drain_timeout_s
        self._refused: set[int] = set()  # events whose bundle this worker could not serve
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="kdoct-rollout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.follow()
            except Exception:  # noqa: BLE001  (the watcher outlives any one failure)
                log.exception("model rollout check failed; serving on")

    async def follow(self) -> bool:
        """Switch to the newest event's bundle when it is not the one serving; True when switched."""
        try:
            event = await asyncio.to_thread(head_event, self._engine)
        except SQLAlchemyError as exc:
            log.debug("model events not read (%s): serving on", type(exc).__name__)
            return False
        serving = self.classifier.student.loaded.bundle.sha256
        if event is None or event.to_sha256 == serving or event.sequence in self._refused:
            return False
        return await self.switch(event)

    async def switch(self, event: ModelEventRow) -> bool:
        old = self.classifier.student.loaded
        try:
            loaded = await asyncio.to_thread(self._load, Path(event.to_path))
        except KdoctError as exc:
            return self._refuse(event, f"its bundle does not load: {exc}")
        if loaded.bundle.sha256 != event.to_sha256:
            return self._refuse(
                event,
                f"the bundle at {event.to_path} is {loaded.bundle.sha256}, not the {event.to_sha256} named",
            )
        if loaded.class_names != old.class_names:
            return self._refuse(event, f"its classes {loaded.class_names} differ from {old.class_names}")
        served = self._serve(loaded)
        served.batcher.start()
        # One step, no await between: the next request is prepared for and answered by the new student.
        retired = self.classifier.use_student(served)
        self.intake.use(loaded.spec, loaded.gate)
        self._on_switch(old, loaded)
        prometheus.MODEL_SWITCHES.labels(outcome="switched").inc()
        log.warning(
            "model event %d (%s by %s): now serving %s %s (%s), was %s %s (%s)",
            event.sequence, event.action, event.actor, loaded.bundle.name, loaded.bundle.version,
            loaded.bundle.sha256[:12], old.bundle.name, old.bundle.version, old.bundle.sha256[:12],
        )  # fmt: skip
        await retired.batcher.stop(self._drain_timeout_s)
        return True

    def _refuse(self, event: ModelEventRow, why: str) -> bool:
        self._refused.add(event.sequence)
        prometheus.MODEL_SWITCHES.labels(outcome="refused").inc()
        log.error(
            "model event %d (%s to %s) refused by this worker, serving on %s: %s",
            event.sequence, event.action, event.to_sha256[:12],
            self.classifier.student.loaded.bundle.sha256[:12], why,
        )  # fmt: skip
        return False
