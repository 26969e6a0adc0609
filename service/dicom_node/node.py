"""The node's work, on the service's event loop: instances admitted as they arrive, series classified
once idle, their results reported and delivered.

admit (from an association thread, handed to the loop): the dicom_store door of the ingress gate (the
caller's in-flight count), the file's size against KDOCT_MAX_UPLOAD_BYTES and the memory budget, its
header probed in the decode pool (frames, pixels, deflate bombs: the same probe as POST /classify) and
charged to the ticket, a deflated data set inflated once without keeping it (zeros after the pixel
data, which the header probe never reaches), the series' frames against KDOCT_MAX_FRAMES, then the
store (fsync'd). Only then is the C-STORE answered success.

A series that is due (series.py) is classified (classify.py). Refused for load (503, 429), it is tried
again later; refused for what it is (4xx), it is dropped and counted, its reason logged. Classified,
its result objects are built (`report`) and delivered (`deliver`, in a thread: it retries and
dead-letters on its own), and only then are its instances removed from the store.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from service import prometheus
from service.dicom_node.classify import SeriesClassifier, caller_client
from service.dicom_node.results import SeriesResult
from service.dicom_node.scp import StoreOutcome
from service.dicom_node.series import PendingSeries, SeriesTracker
from service.dicom_node.store import InstanceStore
from service.imaging import check_inflated_size, dicom_series_uid
from service.ingress.doors import DICOM_STORE
from service.ingress.gate import IngressGate
from service.intake import Intake
from service.problems import Problem

__all__ = ["DicomNode", "outcome_of"]

log = logging.getLogger(__name__)

ADMIT_TIMEOUT_S = 120.0
RETRY_AFTER_LOAD_S = 2.0
RETRY_AFTER_FAILURE_S = 30.0
CONCURRENT_SERIES = 4
HOUSEKEEPING_S = 5.0

Report = Callable[[SeriesResult], Sequence[object]]  # the result objects of a series (SR, PDF)
Deliver = Callable[[str, Sequence[object]], bool]  # (headline prediction id, objects) -> delivered


def outcome_of(problem: Problem) -> StoreOutcome:
    """A refusal as a C-STORE status (scp.py STATUS) and its comment."""
    if problem.status in (429, 503):
        status = "busy"
    elif problem.status == 413:
        status = "too_large"
    elif problem.status == 415:
        status = "unsupported"
    else:
        status = "invalid"
    return StoreOutcome(status, problem.detail)


class DicomNode:
    def __init__(
        self,
        *,
        gate: IngressGate,
        intake: Intake,
        classifier: SeriesClassifier,
        store: InstanceStore,
        tracker: SeriesTracker,
        report: Report,
        deliver: Deliver | None,
        max_upload_bytes: int,
        max_frames: int,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        """`housekeeping`: blocking upkeep run in a thread every HOUSEKEEPING_S (the dead letters'
        gauge, which `dicom-replay` changes from another process)."""
        self.gate = gate
        self.intake = intake
        self.classifier = classifier
        self.store = store
        self.tracker = tracker
        self.report = report
        self.deliver = deliver
        self.max_upload_bytes = max_upload_bytes
        self.max_frames = max_frames
        self.housekeeping = housekeeping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: asyncio.Task | None = None
        self._work: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(CONCURRENT_SERIES)
        # The SR and the PDF are pure Python (highdicom, fpdf2: ~0.25 s a series, holding the GIL): in a
        # process of their own they take the core the single inference thread leaves, instead of the
        # event loop's and the batcher's time (docs/BENCHMARKS.md, "DICOM node").
        self._reports = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    # From association threads -----------------------------------------------------------------------

    def admit(self, path: Path, caller: str, sop_instance_uid: str) -> StoreOutcome:
        future = asyncio.run_coroutine_threadsafe(self._admit(path, caller, sop_instance_uid), self._loop)
        try:
            return future.result(timeout=ADMIT_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            prometheus.DICOM_INSTANCES.labels(outcome="refused").inc()
            return StoreOutcome("busy", "the node could not take the instance in time: retry later")

    # On the event loop ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for stored in self.store.pending():  # what a previous run received and did not finish
            for path in stored.paths:
                self.tracker.add(stored.key, path, 0, stored.caller)
        if len(self.tracker):
            log.info("DICOM node: %d series left by the previous run will be classified", len(self.tracker))
        self._runner = asyncio.create_task(self._run(), name="kdoct-dicom-series")

    async def stop(self, timeout_s: float) -> None:
        if self._runner is not None:
            self._runner.cancel()
        if self._work:
            await asyncio.wait(self._work, timeout=timeout_s)
        await asyncio.to_thread(self._reports.shutdown, wait=True, cancel_futures=True)

    async def _admit(self, path: Path, caller: str, sop_instance_uid: str) -> StoreOutcome:
        try:
            ticket = await self.gate.enter(DICOM_STORE, caller_client(caller))
        except Problem as problem:
            return self._refused(problem)
        try:
            stored = await self._store(path, caller, sop_instance_uid, ticket)
        except Problem as problem:
            return self._refused(problem)
        except OSError as exc:
            log.error("DICOM node: an instance could not be stored: %s", type(exc).__name__)
            prometheus.DICOM_INSTANCES.labels(outcome="failed").inc()
            return StoreOutcome("failed", "the node could not store the instance: retry later")
        finally:
            ticket.close()
        prometheus.DICOM_INSTANCES.labels(outcome="stored").inc()
        return stored

    async def _store(self, path: Path, caller: str, sop_instance_uid: str, ticket) -> StoreOutcome:
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise Problem(
                "payload-too-large",
                f"the instance is {size} bytes, over the limit of {self.max_upload_bytes} "
                f"(KDOCT_MAX_UPLOAD_BYTES)",
                reason="too_large",
            )
        ticket.charge_bytes(size, "the received instance")
        data = await self.intake.in_pool(path.read_bytes)
        shape = await self.intake.in_pool(self.intake.probe, data)
        ticket.charge_images([shape])
        await self.intake.in_pool(check_inflated_size, data, shape)
        series_uid = await self.intake.in_pool(dicom_series_uid, data)
        del data
        if series_uid is None:
            raise Problem(
                "invalid-image", "the instance has no valid Series Instance UID", reason="invalid_image"
            )
        key = self.store.series_key(series_uid)
        frames = self.tracker.frames(key) + shape.frames
        if frames > self.max_frames:
            raise Problem(
                "decompression-bomb",
                f"the series would hold {frames} frames, over the limit of {self.max_frames} per series "
                f"(KDOCT_MAX_FRAMES)",
                reason="decompression_bomb",
            )
        stored = await self.intake.in_pool(self.store.put, key, sop_instance_uid, path, caller)
        self.tracker.add(key, stored, shape.frames, caller)
        return StoreOutcome("success")

    def _refused(self, problem: Problem) -> StoreOutcome:
        prometheus.DICOM_INSTANCES.labels(outcome="refused").inc()
        outcome = outcome_of(problem)
        log.warning("DICOM node: an instance was refused (%s): %s", outcome.status, problem.detail)
        return outcome

    async def _run(self) -> None:
        tick = min(1.0, self.tracker.idle_s / 4)
        upkeep_due = 0.0
        while True:
            await asyncio.sleep(tick)
            if self.housekeeping is not None and time.monotonic() >= upkeep_due:
                upkeep_due = time.monotonic() + HOUSEKEEPING_S
                try:
                    await asyncio.to_thread(self.housekeeping)
                except Exception:
                    log.exception("DICOM node: housekeeping failed")
            for series in self.tracker.due():
                task = asyncio.create_task(self._process(series))
                self._work.add(task)
                task.add_done_callback(self._work.discard)

    async def _process(self, series: PendingSeries) -> None:
        async with self._slots:
            paths = list(series.paths)
            try:
                result = await self.classifier.classify(paths, series.caller)
            except Problem as problem:
                self._series_refused(series, paths, problem)
                return
            except Exception:
                log.exception("DICOM node: a series could not be classified; it is tried again later")
                prometheus.DICOM_SERIES.labels(outcome="failed").inc()
                self.tracker.retry_later(series.key, RETRY_AFTER_FAILURE_S)
                return
            prometheus.DICOM_SERIES.labels(outcome="classified").inc()
            headline = result.result.answer
            log.info(
                "DICOM node: series classified: %d instance(s), label %s, prediction %s",
                len(result.instances), headline.label, headline.prediction_id,
            )  # fmt: skip
            await self._send(result, headline.prediction_id)
            self.store.remove(paths)
            self.tracker.done(series.key, paths)

    def _series_refused(self, series: PendingSeries, paths: list[Path], problem: Problem) -> None:
        if problem.status in (429, 503):
            self.tracker.retry_later(series.key, RETRY_AFTER_LOAD_S)
            return
        log.warning("DICOM node: a series was refused: %s", problem.detail)
        prometheus.DICOM_SERIES.labels(outcome="refused").inc()
        self.store.remove(paths)
        self.tracker.done(series.key, paths)

    async def _send(self, result: SeriesResult, prediction_id: str) -> None:
        try:
            objects = await asyncio.get_running_loop().run_in_executor(self._reports, self.report, result)
        except Exception:
            log.exception("DICOM node: the reports of prediction %s could not be built", prediction_id)
            return
        if self.deliver is None:
            return
        # Blocking (associations, HTTP, backoff): in a thread, so the loop classifies meanwhile.
        await asyncio.to_thread(self.deliver, prediction_id, objects)
