"""Micro-batching: concurrent requests to one model are gathered into runtime calls.

One consumer task per model takes whatever is queued the moment the runtime is free (so under
light load a request runs alone, at once) and, only where batching pays (CUDA) and `max_wait_s` > 0,
waits up to `max_wait_s` for more. The runtime runs in a single dedicated thread, off the event
loop. The queue is bounded: a full queue refuses at once (`QueueFull`). A failed runtime call fails
every request of that batch; a request that waits past `timeout_s` gets `InferenceTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service import prometheus
from service.inference.runtime import Runtime

__all__ = ["BatchResult", "Batcher", "BatcherClosed", "InferenceError", "InferenceTimeout", "QueueFull"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class BatcherClosed(Exception):
    pass


class InferenceError(Exception):
    pass


class InferenceTimeout(InferenceError):
    pass


@dataclass(frozen=True, slots=True)
class BatchResult:
    logits: np.ndarray  # (rows, classes) float32
    features: np.ndarray | None  # (rows, d) float32 penultimate features; None if the model gives none
    queue_s: float
    inference_s: float


@dataclass(slots=True)
class _Job:
    inputs: np.ndarray  # (rows, 3, H, W) float32, C-contiguous
    future: asyncio.Future
    enqueued: float

    @property
    def rows(self) -> int:
        return self.inputs.shape[0]


class Batcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        model_label: str,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        timeout_s: float,
        num_classes: int,
    ) -> None:
        self.runtime = runtime
        self.model_label = model_label
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.num_classes = num_classes
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._busy = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kdoct-infer-{model_label}")
        self._depth = prometheus.QUEUE_DEPTH.labels(model=model_label)
        self._queue_wait = prometheus.QUEUE_WAIT.labels(model=model_label)
        self._batch_size = prometheus.BATCH_SIZE.labels(model=model_label)
        self._inference = prometheus.INFERENCE_DURATION.labels(model=model_label, runtime=runtime.name)

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._consume(), name=f"batcher-{self.model_label}")

    async def submit(self, inputs: np.ndarray) -> BatchResult:
        """Logits for `inputs` (rows, 3, H, W); raises QueueFull, BatcherClosed or InferenceError."""
        if self._closed or self._task is None:
            raise BatcherClosed(f"model {self.model_label} is not accepting requests")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"the queue of model {self.model_label} is full ({self.max_queue} requests)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(inputs, future, time.perf_counter()))
        self._depth.inc()
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise InferenceTimeout(
                f"model {self.model_label} did not answer within {self.timeout_s:g} s "
                f"(KDOCT_INFERENCE_TIMEOUT_S)"
            ) from None

    def _take(self, jobs: list[_Job], rows: int) -> int:
        """Move queued jobs into `jobs` while they fit in one batch; a lone oversized job is taken too."""
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # cancelled or timed out while queued
                self._pending.popleft()
                self._depth.dec()
                continue
            if jobs and rows + job.rows > self.max_batch_size:
                break
            self._pending.popleft()
            self._depth.dec()
            jobs.append(job)
            rows += job.rows
        return rows

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            jobs: list[_Job] = []
            rows = self._take(jobs, 0)
            # Busy from the first job taken: while a batch is being gathered its jobs are in no queue,
            # and stop() must wait for them (it once cancelled this task right then, and those
            # requests waited out KDOCT_INFERENCE_TIMEOUT_S).
            self._busy = True
            try:
                if self.max_wait_s > 0 and rows < self.max_batch_size:
                    deadline = loop.time() + self.max_wait_s
                    while rows < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                        self._wakeup.clear()
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), remaining)
                        except TimeoutError:
                            break
                        rows = self._take(jobs, rows)
                if jobs:
                    await self._run(jobs, loop)
            except asyncio.CancelledError:
                for job in jobs:  # cancelled past the drain deadline while gathering: answer them
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the service shut down during inference"))
                raise
            finally:
                self._busy = False

    async def _run(self, jobs: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        for job in jobs:
            self._queue_wait.observe(started - job.enqueued)
        try:
            inputs = jobs[0].inputs if len(jobs) == 1 else np.concatenate([job.inputs for job in jobs])
            logits, features = await loop.run_in_executor(self._executor, self._predict, inputs)
        except asyncio.CancelledError:
            for job in jobs:  # shutdown past its drain deadline: answer, do not leave them hanging
                if not job.future.done():
                    job.future.set_exception(BatcherClosed("the service shut down during inference"))
            raise
        except Exception as exc:  # noqa: BLE001 - every request of the batch must hear about it
            log.error("inference failed on a batch of %d request(s)", len(jobs), exc_info=exc)
            error = InferenceError(f"model {self.model_label} failed on this batch ({type(exc).__name__})")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        inference_s = time.perf_counter() - started
        offset = 0
        for job in jobs:
            if not job.future.done():
                rows = slice(offset, offset + job.rows)
                job_features = None if features is None else features[rows]
                job.future.set_result(
                    BatchResult(logits[rows], job_features, started - job.enqueued, inference_s)
                )
            offset += job.rows

    def _predict(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Runs in the inference thread: the batch in chunks of at most max_batch_size rows."""
        outputs, feature_outputs = [], []
        for start in range(0, inputs.shape[0], self.max_batch_size):
            chunk = inputs[start : start + self.max_batch_size]
            began = time.perf_counter()
            logits, features = self.runtime.predict(chunk)
            logits = np.asarray(logits, dtype=np.float32)
            self._inference.observe(time.perf_counter() - began)
            self._batch_size.observe(chunk.shape[0])
            if logits.shape != (chunk.shape[0], self.num_classes):
                raise InferenceError(
                    f"runtime returned logits of shape {logits.shape} for {chunk.shape[0]} rows"
                )
            if not np.isfinite(logits).all():
                raise InferenceError("runtime returned non-finite logits")
            if features is not None:
                features = np.asarray(features, dtype=np.float32)
                if (
                    features.ndim != 2
                    or features.shape[0] != chunk.shape[0]
                    or not np.isfinite(features).all()
                ):
                    raise InferenceError(f"runtime returned invalid features of shape {features.shape}")
            outputs.append(logits)
            feature_outputs.append(features)
        if len(outputs) == 1:
            return outputs[0], feature_outputs[0]
        if any(features is None for features in feature_outputs):
            return np.concatenate(outputs), None
        return np.concatenate(outputs), np.concatenate(feature_outputs)

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new requests, let queued and running ones finish (until the deadline), fail the rest."""
        self._closed = True
        deadline = time.monotonic() + drain_timeout_s
        while (self._pending or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            job = self._pending.popleft()
            self._depth.dec()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
