"""Intake: an upload's bytes become what the student takes, in the decode pool, off the event loop.

    probe       the header's shape, charged to the request's Ticket (413/503)     service/imaging.py
    decode      bytes -> DecodedUpload (frames, format, sha256, volume id)        service/imaging.py
    quality     each frame -> None or quality:<what> (the safety gate's check)    kdoct/safety.py
    preprocess  frames -> the student's float32 batch (N, 3, H, W)                kdoct/preprocess.py

Why not under service/inference: nothing here runs a model or waits on a batcher. It is the request's
input side, bounded by the image limits and the ingress budget, and what it hands on (`Prepared`) is
the same whatever the models do with it. The classifier (service/inference/classifier.py) takes it
from here; the pipeline (service/pipeline.py) calls one, then the other.

The Intake owns the decode pool: the threads where a request's CPU work runs off the event loop (the
decoding above, a teacher's own preprocessing, an Open Inference Protocol body's parse, a DICOM SR's
encoding).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kdoct.preprocess import PreprocessSpec, preprocess_array
from kdoct.safety import SafetyGate
from service.imaging import DecodedUpload, ImageLimits, ImageShape, decode_upload, probe_upload
from service.ingress.budget import Ticket
from service.monitoring.drift import count_device
from service.problems import Problem

__all__ = ["Intake", "Prepared", "preprocess_frames"]

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """An upload ready for the student: its frames, their input batch and their quality reasons."""

    upload: DecodedUpload
    inputs: np.ndarray  # (frames, 3, H, W) float32
    quality: list[str | None] | None  # per frame: None when fine; the list is None when the gate is off
    # The preprocessing and the gate it was prepared for: the student serving then, which a promotion
    # may replace before it is classified (service/inference/classifier.py prepares it again).
    spec: PreprocessSpec | None = None
    gate: SafetyGate | None = None


def preprocess_frames(frames: list, spec: PreprocessSpec) -> np.ndarray:
    """Frames -> one C-contiguous float32 batch (frames, 3, H, W), filled in place (no stacking copy)."""
    if len(frames) == 1:
        return preprocess_array(frames[0], spec)[None]
    height, width = spec.input_size
    batch = np.empty((len(frames), 3, height, width), dtype=np.float32)
    for index, frame in enumerate(frames):
        batch[index] = preprocess_array(frame, spec)
    return batch


class Intake:
    """Uploads in, `Prepared` out, for the student's preprocessing (`spec`) and safety gate (`gate`:
    None when the gate is off)."""

    def __init__(
        self, spec: PreprocessSpec, gate: SafetyGate | None, *, limits: ImageLimits, pool: Executor
    ) -> None:
        self.spec = spec
        self.gate = gate
        self.limits = limits
        self.pool = pool

    def use(self, spec: PreprocessSpec, gate: SafetyGate | None) -> None:
        """Prepare for another student from the next upload on (a promotion or rollback)."""
        self.spec, self.gate = spec, gate

    # In the decode pool --------------------------------------------------------------------------

    def probe(self, data: bytes) -> ImageShape:
        """The upload's shape from its header, checked against the per-image limits; nothing decoded."""
        return probe_upload(data, self.limits)

    def decode(
        self,
        data: bytes,
        *,
        charge: Callable[[Sequence[ImageShape]], None] | None = None,
        shape: ImageShape | None = None,
    ) -> Prepared:
        """Decode, check quality and preprocess for the student; runs in the decode pool, off the
        event loop. The upload's shape is read from its header first (or given: `shape`, already
        charged) and `charge`d (the request's ingress budget, which may refuse) before any pixel is
        decoded."""
        if shape is None:
            shape = self.probe(data)
            if charge is not None:
                charge([shape])
        upload = decode_upload(data, self.limits, expected=shape)
        if upload.device is not None:  # every door that decodes DICOM passes here
            count_device(*upload.device)
        spec, gate = self.spec, self.gate  # one student's, even if a promotion lands meanwhile
        quality = None if gate is None else [gate.quality_reason(frame) for frame in upload.frames]
        return Prepared(upload, preprocess_frames(upload.frames, spec), quality, spec=spec, gate=gate)

    def tensor(self, image: np.ndarray) -> Prepared:
        """One already preprocessed image (3, H, W) float32, as the Open Inference Protocol sends it.

        There are no pixels to look at, so the gate's quality check cannot run: every quality reason is
        None and only the out-of-distribution score on the student's features decides `gradable`. The
        recorded input hash is that of the tensor's little-endian float32 bytes."""
        image = np.ascontiguousarray(image, dtype="<f4")
        _, height, width = image.shape
        upload = DecodedUpload(
            format="tensor",
            frames=[],  # nothing decoded: a teacher with other preprocessing cannot review it
            width=width,
            height=height,
            input_sha256=hashlib.sha256(image.tobytes()).hexdigest(),
        )
        spec, gate = self.spec, self.gate
        return Prepared(upload, image[None], None if gate is None else [None], spec=spec, gate=gate)

    # From the event loop -------------------------------------------------------------------------

    async def in_pool(self, work: Callable[..., T], *args) -> T:
        """Run `work(*args)` in the decode pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def prepare(
        self, data: bytes, ticket: Ticket, shape: ImageShape | None = None
    ) -> tuple[Prepared, float]:
        """Decode and preprocess in the decode pool, the upload's header charged to `ticket` first (or
        `shape`, already charged); the Prepared upload and the milliseconds it took."""
        decode_began = time.perf_counter()
        decode = functools.partial(self.decode, data, charge=ticket.charge_images, shape=shape)
        prepared = await self.in_pool(decode)
        return prepared, (time.perf_counter() - decode_began) * 1000.0

    async def prepare_all(self, items: Sequence[bytes], ticket: Ticket) -> list[tuple[Prepared, float]]:
        """Several uploads of one request (service/api/inference_protocol.py): every header is read and
        the whole request charged to `ticket` before any pixel is decoded, and every upload is decoded
        before any is inferred, so a bad one fails the request before the model spends time on the
        others. A refusal names the element: "element <i>: ...", with the status its cause has."""
        shapes = await self.in_pool(self._probe_all, items)
        ticket.charge_images(shapes)
        results = await asyncio.gather(
            *(self.prepare(data, ticket, shape) for data, shape in zip(items, shapes, strict=True)),
            return_exceptions=True,
        )
        for index, result in enumerate(results):
            if isinstance(result, Problem):
                raise _element_problem(index, result)
            if isinstance(result, BaseException):
                raise result
        return results

    async def prepare_tensors(self, images: Sequence[np.ndarray]) -> list[tuple[Prepared, float]]:
        """Preprocessed images (the Open Inference Protocol's FP32 input): nothing to decode (0 ms)."""
        return await self.in_pool(lambda: [(self.tensor(image), 0.0) for image in images])

    async def preprocess(self, frames: list, spec: PreprocessSpec) -> np.ndarray:
        """Decoded frames preprocessed for another model's `spec` (a teacher's), in the decode pool."""
        return await self.in_pool(preprocess_frames, frames, spec)

    async def prepare_again(
        self, prepared: Prepared, spec: PreprocessSpec, gate: SafetyGate | None
    ) -> Prepared:
        """`prepared` for another student's preprocessing and gate, in the decode pool: after a
        promotion, or for a shadowing candidate. A tensor (no frames) keeps its input: only a student of
        the same preprocessing may take it (the classifier checks)."""
        return await self.in_pool(_prepare_again, prepared, spec, gate)

    def _probe_all(self, items: Sequence[bytes]) -> list[ImageShape]:
        shapes = []
        for index, data in enumerate(items):
            try:
                shapes.append(self.probe(data))
            except Problem as problem:
                raise _element_problem(index, problem) from None
        return shapes

    def close(self) -> None:
        """At shutdown: stop the decode pool, dropping work not started."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _prepare_again(prepared: Prepared, spec: PreprocessSpec, gate: SafetyGate | None) -> Prepared:
    frames = prepared.upload.frames
    if not frames:
        return Prepared(
            prepared.upload, prepared.inputs, None if gate is None else [None], spec=spec, gate=gate
        )
    quality = None if gate is None else [gate.quality_reason(frame) for frame in frames]
    inputs = prepared.inputs if spec == prepared.spec else preprocess_frames(frames, spec)
    return Prepared(prepared.upload, inputs, quality, spec=spec, gate=gate)


def _element_problem(index: int, problem: Problem) -> Problem:
    return Problem(
        problem.slug,
        f"element {index}: {problem.detail}",
        reason=problem.reason,
        headers=problem.headers,
        status=problem.status,
    )
