"""Batch and predict: prepared uploads (service/intake.py) -> student (and, by policy, teacher)
results, as plain typed values; service/pipeline.py turns them into the answer.

The second-opinion policy is the classifier's: the service's default, a request's override (refused
when it asks for a teacher the service has none of), and which frames the teacher reviews.

The safety gate (kdoct/safety.py), when the student has one, judges every frame: the quality check
at intake (decode pool, before inference), the out-of-distribution score on the student's own
features after it. A frame it flags keeps its probabilities but is `gradable: false`, with its
reason, and referred; a volume is decided by its gradable frames only (service/inference/volume.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from kdoct.preprocess import PreprocessSpec
from kdoct.probabilities import softmax
from kdoct.safety import GateVerdict, SafetyGate
from service.inference.batcher import Batcher, InferenceError
from service.inference.loaded_model import LoadedModel
from service.inference.second_opinion import Policy, frames_to_review, refer
from service.inference.volume import aggregate_volume, volume_gate
from service.intake import Prepared

__all__ = [
    "Classification",
    "Classifier",
    "ModelChanged",
    "Opinion",
    "Result",
    "SecondOpinionUnavailable",
    "ServedModel",
]

# Frames preprocessed for another model's spec (a teacher's), off the event loop (service/intake.py).
Preprocess = Callable[[list, PreprocessSpec], Awaitable[np.ndarray]]
# An upload prepared again for another student's preprocessing and gate, off the event loop.
PrepareAgain = Callable[[Prepared, PreprocessSpec, SafetyGate | None], Awaitable[Prepared]]


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


@dataclass
class Classification:
    frames: list[Result]
    volume: Result | None
    queue_ms: float
    inference_ms: float
    teacher_used: bool
    # The student that answered: the one serving when the request reached the batcher, which a
    # promotion may since have replaced (service/lifecycle/rollout.py).
    student: LoadedModel


class ModelChanged(InferenceError):
    """A tensor prepared for a student whose preprocessing differs from the one now serving: it cannot
    be preprocessed again (the client sent the tensor), so the request is retried by the client."""


class SecondOpinionUnavailable(Exception):
    """A request asked for the teacher (second_opinion=always) and this service has none."""


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
        preprocess: Preprocess,
        prepare_again: PrepareAgain,
    ) -> None:
        self.student = student
        self.teacher = teacher
        self.policy = policy
        self.threshold = threshold
        self.preprocess = preprocess
        self.prepare_again = prepare_again
        # Students replaced by a promotion or rollback, by sha256: an answer of one may still be
        # explained after the swap (service/pipeline.py). Only the last few are kept.
        self._retired: dict[str, ServedModel] = {}

    def use_student(self, served: ServedModel) -> ServedModel:
        """Serve `served` from the next request on; returns the student it replaces. A request that
        already reached the old student's batcher finishes there: the switch is at a batch boundary."""
        old, self.student = self.student, served
        self._retired[old.loaded.bundle.sha256] = old
        while len(self._retired) > 2:
            self._retired.pop(next(iter(self._retired)))
        return old

    def student_by_sha256(self, sha256: str) -> LoadedModel:
        """The student of that identity: the serving one, else a recently replaced one."""
        if self.student.loaded.bundle.sha256 == sha256:
            return self.student.loaded
        retired = self._retired.get(sha256)
        return retired.loaded if retired is not None else self.student.loaded

    def policy_for(self, requested: Policy | None) -> Policy:
        """The policy a request runs under: its own (`?second_opinion=`), else the service's. Asking for
        the teacher always needs one: SecondOpinionUnavailable when the service has none."""
        policy = requested or self.policy
        if policy == "always" and self.teacher is None:
            raise SecondOpinionUnavailable(
                "second_opinion=always needs a teacher model, and this service has none "
                "(KDOCT_TEACHER_BUNDLE)"
            )
        return policy

    async def classify(self, prepared: Prepared, policy: Policy) -> Classification:
        served = self.student
        if prepared.spec != served.loaded.spec or prepared.gate is not served.loaded.gate:
            prepared = await self._prepare_again(prepared, served.loaded)
            served = self.student  # taken again after the await: the newest student answers
        upload, student_inputs = prepared.upload, prepared.inputs
        student = served.loaded
        names = student.class_names
        answer = await served.batcher.submit(student_inputs)
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
                teacher_inputs = await self.preprocess(frames, teacher.spec)
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
            student=student,
        )

    async def _prepare_again(self, prepared: Prepared, student: LoadedModel) -> Prepared:
        """An upload prepared for another student (one a promotion has just replaced, or the serving one
        for a shadowing candidate), prepared again for this one's preprocessing and safety gate."""
        if not prepared.upload.frames and prepared.spec != student.spec:
            raise ModelChanged(
                "the serving model changed while this request waited, and its tensor was preprocessed for "
                "the previous one: send it again preprocessed as GET /models describes"
            )
        return await self.prepare_again(prepared, student.spec, student.gate)

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
