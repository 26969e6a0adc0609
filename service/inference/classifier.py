"""Batch and predict: decoded frames -> student (and, by policy, teacher) results, as plain typed
values; service/pipeline.py turns them into the answer."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from kdoct.preprocess import PreprocessSpec, preprocess_array
from kdoct.probabilities import softmax
from service.imaging import DecodedUpload, ImageLimits, decode_upload
from service.inference.batcher import Batcher
from service.inference.loaded_model import LoadedModel
from service.inference.second_opinion import Policy, frames_to_review, refer
from service.inference.volume import aggregate_volume

__all__ = ["Classification", "Classifier", "Opinion", "Result", "ServedModel", "preprocess_frames"]


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

    def prepare(self, data: bytes) -> tuple[DecodedUpload, np.ndarray]:
        """Decode and preprocess for the student; runs in the decode pool, off the event loop."""
        upload = decode_upload(data, self.limits)
        return upload, preprocess_frames(upload.frames, self.student.loaded.spec)

    async def classify(
        self, upload: DecodedUpload, student_inputs: np.ndarray, policy: Policy
    ) -> Classification:
        student = self.student.loaded
        names = student.class_names
        answer = await self.student.batcher.submit(student_inputs)
        queue_s, inference_s = answer.queue_s, answer.inference_s
        probabilities = softmax(answer.logits, student.temperature)
        labels = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(labels)), labels]

        teacher_probabilities: dict[int, np.ndarray] = {}
        review = frames_to_review(policy, confidences, self.threshold) if self.teacher else np.empty(0, int)
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
            frames.append(
                Result(
                    probabilities=_as_dict(names, probabilities[index]),
                    label=names[label],
                    confidence=float(confidences[index]),
                    refer=refer(float(confidences[index]), self.threshold, opinion and opinion.agrees),
                    second_opinion=opinion,
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
        names = self.student.loaded.class_names
        label, confidence, volume_probabilities = aggregate_volume(probabilities, names)
        opinion = None
        if teacher_probabilities:
            reviewed = np.stack(list(teacher_probabilities.values()))
            teacher_label, teacher_confidence, teacher_volume = aggregate_volume(reviewed, names)
            # The volume opinion's label and confidence follow the same most-severe-frame rule.
            opinion = Opinion(
                model=self.teacher.loaded.identity(),
                label=names[teacher_label],
                probabilities=_as_dict(names, teacher_volume),
                confidence=teacher_confidence,
                agrees=names[teacher_label] == names[label],
                frames_reviewed=len(teacher_probabilities),
            )
        return Result(
            probabilities=_as_dict(names, volume_probabilities),
            label=names[label],
            confidence=confidence,
            refer=any(frame.refer for frame in frames) or bool(opinion and not opinion.agrees),
            second_opinion=opinion,
        )
