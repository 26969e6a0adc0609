"""Batch and predict: decoded frames -> student (and, by policy, teacher) results, as plain typed
values; service/pipeline.py turns them into the answer.

The safety gate (kdoct/safety.py), when the student has one, judges every frame: the quality check
in `prepare` (decode pool, before inference), the out-of-distribution score on the student's own
features after it. A frame it flags keeps its probabilities but is `gradable: false`, with its
reason, and referred; a volume is decided by its gradable frames only (service/inference/volume.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from kdoct.preprocess import PreprocessSpec, preprocess_array
from kdoct.probabilities import softmax
from kdoct.safety import GateVerdict
from service.imaging import DecodedUpload, ImageLimits, ImageShape, decode_upload, probe_upload
from service.inference.batcher import Batcher, InferenceError
from service.inference.loaded_model import LoadedModel
from service.inference.second_opinion import Policy, frames_to_review, refer
from service.inference.volume import aggregate_volume, volume_gate

__all__ = [
    "Classification",
    "Classifier",
    "Opinion",
    "Prepared",
    "Result",
    "ServedModel",
    "preprocess_frames",
]


def preprocess_frames(frames: list, spec: PreprocessSpec) -> np.ndarray:
    """Frames -> one C-contiguous float32 batch (frames, 3, H, W), filled in place (no stacking copy)."""
    if len(frames) == 1:
        return preprocess_array(frames[0], spec)[None]
    height, width = spec.input_size
    batch = np.empty((len(frames), 3, height, width), dtype=np.float32)
    for index, frame in enumerate(frames):
        batch[index] = preprocess_array(frame, spec)
    return batch


@dataclass
class ServedModel:
    loaded: LoadedModel
    batcher: Batcher


@dataclass(frozen=True)
class Opinion:
    """The teacher's result for a frame, an image or a volume."""

    model: dict[str, str]  # the teacher's identity: name, version, sha256
    label: str
    probabilities: dict[str, float]
    confidence: float
    agrees: bool  # the teacher's label equals the student's
    frames_reviewed: int | None = None  # volumes: how many frames the teacher saw


@dataclass(frozen=True)
class Result:
    """One answered result (a frame, an image, or a volume)."""

    probabilities: dict[str, float]
    label: str
    confidence: float
    refer: bool
    second_opinion: Opinion | None = None
    # The safety gate's verdict; None when the gate is off.
    gradable: bool | None = None
    reason: str | None = None  # "quality:<what>" or "out_of_distribution" when not gradable
    ood_score: float | None = None


@dataclass(frozen=True)
class Prepared:
    """An upload ready for the student: its frames, their input batch and their quality reasons."""

    upload: DecodedUpload
    inputs: np.ndarray  # (frames, 3, H, W) float32
    quality: list[str | None] | None  # per frame: None when fine; the list is None when the gate is off


@dataclass
class Classification:
    frames: list[Result]
    volume: Result | None
    queue_ms: float
    inference_ms: float
    teacher_used: bool


def _as_dict(class_names: tuple[str, ...], probabilities: np.ndarray) -> dict[str, float]:
    # 10 decimals: small JSON, and the sum stays within 1e-9 of 1.
    return {name: round(float(value), 10) for name, value in zip(class_names, probabilities, strict=True)}


class Classifier:
    def __init__(
        self,
        student: ServedModel,
        teacher: ServedModel | None,
        *,
        policy: Policy,
        threshold: float,
        limits: ImageLimits,
        pool: Executor,
    ) -> None:
        self.student = student
        self.teacher = teacher
        self.policy = policy
        self.threshold = threshold
        self.limits = limits
        self.pool = pool

    def probe(self, data: bytes) -> ImageShape:
        """The upload's shape from its header, checked against the per-image limits; nothing decoded."""
        return probe_upload(data, self.limits)

    def prepare(
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
        gate = self.student.loaded.gate
        quality = None if gate is None else [gate.quality_reason(frame) for frame in upload.frames]
        return Prepared(upload, preprocess_frames(upload.frames, self.student.loaded.spec), quality)

    def prepare_tensor(self, image: np.ndarray) -> Prepared:
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
        quality = None if self.student.loaded.gate is None else [None]
        return Prepared(upload, image[None], quality)

    async def classify(self, prepared: Prepared, policy: Policy) -> Classification:
        upload, student_inputs = prepared.upload, prepared.inputs
        student = self.student.loaded
        names = student.class_names
        answer = await self.student.batcher.submit(student_inputs)
        queue_s, inference_s = answer.queue_s, answer.inference_s
        probabilities = softmax(answer.logits, student.temperature)
        labels = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(labels)), labels]
        verdicts: list[GateVerdict | None] = [None] * len(labels)
        if student.gate is not None and prepared.quality is not None:
            if answer.features is None:
                raise InferenceError("the student's runtime gave no features: the safety gate cannot run")
            verdicts = list(student.gate.verdicts(prepared.quality, answer.features))

        teacher_probabilities: dict[int, np.ndarray] = {}
        review = frames_to_review(policy, confidences, self.threshold) if self.teacher else np.empty(0, int)
        if len(review) and self.teacher.loaded.spec != student.spec and not upload.frames:
            # A tensor input has no frames to preprocess again for the teacher's input size.
            review = np.empty(0, int)
        if len(review):
            teacher = self.teacher.loaded
            if teacher.spec == student.spec:
                teacher_inputs = student_inputs if len(review) == len(labels) else student_inputs[review]
            else:
                frames = [upload.frames[index] for index in review]
                loop = asyncio.get_running_loop()
                teacher_inputs = await loop.run_in_executor(
                    self.pool, preprocess_frames, frames, teacher.spec
                )
            teacher_answer = await self.teacher.batcher.submit(np.ascontiguousarray(teacher_inputs))
            queue_s += teacher_answer.queue_s
            inference_s += teacher_answer.inference_s
            reviewed = softmax(teacher_answer.logits, teacher.temperature)
            teacher_probabilities = dict(zip(review.tolist(), reviewed, strict=True))

        frames = []
        for index, label in enumerate(labels.tolist()):
            opinion = None
            if index in teacher_probabilities:
                opinion = self._opinion(teacher_probabilities[index], names[label])
            verdict = verdicts[index]
            unsure = refer(float(confidences[index]), self.threshold, opinion and opinion.agrees)
            frames.append(
                Result(
                    probabilities=_as_dict(names, probabilities[index]),
                    label=names[label],
                    confidence=float(confidences[index]),
                    refer=unsure or (verdict is not None and not verdict.gradable),
                    second_opinion=opinion,
                    gradable=None if verdict is None else verdict.gradable,
                    reason=None if verdict is None else verdict.reason,
                    ood_score=None if verdict is None else verdict.ood_score,
                )
            )
        volume = self._volume(probabilities, frames, teacher_probabilities) if upload.is_volume else None
        return Classification(
            frames=frames,
            volume=volume,
            queue_ms=queue_s * 1000.0,
            inference_ms=inference_s * 1000.0,
            teacher_used=bool(teacher_probabilities),
        )

    def _opinion(self, probabilities: np.ndarray, student_label: str) -> Opinion:
        teacher = self.teacher.loaded
        label = int(probabilities.argmax())
        return Opinion(
            model=teacher.identity(),
            label=teacher.class_names[label],
            probabilities=_as_dict(teacher.class_names, probabilities),
            confidence=float(probabilities[label]),
            agrees=teacher.class_names[label] == student_label,
        )

    def _volume(
        self, probabilities: np.ndarray, frames: list[Result], teacher_probabilities: dict[int, np.ndarray]
    ) -> Result:
        """The volume's result from its gradable frames only (all frames when none is gradable, which
        makes the volume itself ungradable); see service/inference/volume.py."""
        names = self.student.loaded.class_names
        gradable, reason, deciding = volume_gate([(frame.gradable, frame.reason) for frame in frames])
        label, confidence, volume_probabilities = aggregate_volume(probabilities[deciding], names)
        opinion = None
        reviewed_indices = [index for index in deciding.tolist() if index in teacher_probabilities]
        if reviewed_indices:
            reviewed = np.stack([teacher_probabilities[index] for index in reviewed_indices])
            teacher_label, teacher_confidence, teacher_volume = aggregate_volume(reviewed, names)
            # The volume opinion's label and confidence follow the same most-severe-frame rule.
            opinion = Opinion(
                model=self.teacher.loaded.identity(),
                label=names[teacher_label],
                probabilities=_as_dict(names, teacher_volume),
                confidence=teacher_confidence,
                agrees=names[teacher_label] == names[label],
                frames_reviewed=len(reviewed_indices),
            )
        referred = any(frames[index].refer for index in deciding.tolist())
        return Result(
            probabilities=_as_dict(names, volume_probabilities),
            label=names[label],
            confidence=confidence,
            refer=referred or gradable is False or bool(opinion and not opinion.agrees),
            second_opinion=opinion,
            gradable=gradable,
            reason=reason,
        )
