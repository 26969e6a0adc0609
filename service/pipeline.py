"""The classification pipeline, in one place:

    decode → batch → predict → postprocess → (explain) → encode

- decode: the upload's bytes to validated frames, their quality reasons and the student's input batch
  (service/intake.py), in the decode pool, off the event loop;
- batch, predict: the student's micro-batcher, then the teacher's for the frames the second-opinion
  policy sends it (service/inference/classifier.py, which owns that policy), giving plain typed results;
- postprocess: those results become the answer, the pydantic `ClassifyResponse` of the API schema
  (service/answer.py), validated as it is built;
- explain (explain=true): Grad-CAM heatmaps added to the answer, never to the records;
- encode: FastAPI serialises the answer against the same schema; a DICOM SR of it (`dicom_report`)
  is built in the decode pool.

The route puts the rows derived from the answer on record (service/records.py Recorder) before it
returns it, so what is stored and what is answered cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.answer import ClassifyResponse, Explanation, FrameResult, InputInfo, SecondOpinion, Timing
from service.dicom_sr import build_report
from service.explain import Explainer, ExplainerBusy
from service.imaging import DecodedUpload, DicomSource
from service.inference.batcher import BatcherClosed, InferenceError, QueueFull
from service.inference.classifier import Classification, Classifier, Opinion, SecondOpinionUnavailable
from service.inference.second_opinion import Policy
from service.ingress.budget import Ticket
from service.intake import Intake, Prepared
from service.problems import Problem
from service.records import new_prediction_id

__all__ = ["Classified", "ClassificationPipeline"]


@dataclass(frozen=True)
class Classified:
    answer: ClassifyResponse
    # DICOM uploads with valid UIDs: what a DICOM SR of the answer references (service/dicom_sr.py).
    # For this request only: never part of the answer, hence never of its records.
    dicom_source: DicomSource | None


class ClassificationPipeline:
    def __init__(self, intake: Intake, classifier: Classifier, explainer: Explainer) -> None:
        self.intake = intake
        self.classifier = classifier
        self.explainer = explainer
        # Told of every answer and what it was made from, before it is explained or recorded; must
        # return at once (a shadowing candidate: service/lifecycle/shadow.py).
        self.on_answer: Callable[[Prepared, ClassifyResponse], None] | None = None

    async def run(
        self,
        data: bytes,
        *,
        ticket: Ticket,
        policy: Policy | None,
        explain: bool,
        request_id: str,
        started: float,
        require_dicom_source: bool = False,
    ) -> Classified:
        """The answer to one upload; ``started`` (perf_counter) is when the request arrived, ``policy``
        the request's own second-opinion policy (None: the service's).
        ``require_dicom_source``: only a DICOM SR is acceptable, so an upload a report cannot reference
        is refused (406) right after decoding: nothing is inferred or recorded for an unwanted answer."""
        policy = self._policy(policy)
        prepared, decode_ms = await self.intake.prepare(data, ticket)
        if require_dicom_source and prepared.upload.dicom_source is None:
            raise _no_dicom_source(prepared.upload)
        answer = await self.answer(
            prepared, decode_ms, policy=policy, explain=explain, request_id=request_id, started=started
        )
        return Classified(answer, prepared.upload.dicom_source)

    async def answer_all(
        self, prepared: Sequence[tuple[Prepared, float]], *, request_id: str, started: float
    ) -> list[ClassifyResponse]:
        """One answer per prepared upload or tensor of a request (the Open Inference Protocol's infer),
        under the service's policy. Each goes to the micro-batcher on its own, which batches them with
        each other and with other requests."""
        policy = self.classifier.policy
        return list(
            await asyncio.gather(
                *(
                    self.answer(item, decode_ms, policy=policy, request_id=request_id, started=started)
                    for item, decode_ms in prepared
                )
            )
        )

    async def answer(
        self,
        prepared: Prepared,
        decode_ms: float,
        *,
        policy: Policy,
        explain: bool = False,
        request_id: str,
        started: float,
    ) -> ClassifyResponse:
        """Batch, predict, postprocess (and explain) one prepared upload or tensor."""
        upload = prepared.upload
        result = await self._predict(prepared, policy)
        answer = self._postprocess(upload, result, request_id, decode_ms)
        if self.on_answer is not None:
            self.on_answer(prepared, answer)
        if explain:
            await self.explain(upload, answer)
        answer.timing_ms.total = round((time.perf_counter() - started) * 1000.0, 3)
        return answer

    async def dicom_report(self, classified: Classified) -> bytes:
        """The answer as a DICOM SR referencing its upload (service/dicom_sr.py), built in the decode
        pool (tens of ms of highdicom). Only for an answer with a DICOM source."""
        assert classified.dicom_source is not None
        return await self.intake.in_pool(build_report, classified.answer, classified.dicom_source)

    def _policy(self, requested: Policy | None) -> Policy:
        try:
            return self.classifier.policy_for(requested)
        except SecondOpinionUnavailable as exc:
            raise Problem("second-opinion-unavailable", str(exc), reason="bad_request") from None

    async def _predict(self, prepared: Prepared, policy: Policy) -> Classification:
        try:
            return await self.classifier.classify(prepared, policy)
        except QueueFull as exc:
            raise Problem("overloaded", str(exc), reason="queue_full", headers={"Retry-After": "1"}) from None
        except BatcherClosed as exc:
            raise Problem("not-ready", str(exc), reason="not_ready", headers={"Retry-After": "5"}) from None
        except InferenceError as exc:
            raise Problem(
                "inference-failed", str(exc), reason="inference_failed", headers={"Retry-After": "1"}
            ) from None

    def _postprocess(
        self, upload: DecodedUpload, result: Classification, request_id: str, decode_ms: float
    ) -> ClassifyResponse:
        frames = None
        if upload.format == "dicom":
            frames = [
                FrameResult(
                    frame_index=index,
                    prediction_id=str(new_prediction_id()),
                    label=item.label,
                    probabilities=item.probabilities,
                    confidence=item.confidence,
                    refer=item.refer,
                    second_opinion=_second_opinion(item.second_opinion),
                    gradable=item.gradable,
                    reason=item.reason,
                    ood_score=item.ood_score,
                )
                for index, item in enumerate(result.frames)
            ]
        top = result.volume or result.frames[0]
        if result.volume is None and frames:
            prediction_id = frames[0].prediction_id  # a single DICOM frame is its own answer
        else:
            prediction_id = str(new_prediction_id())
        return ClassifyResponse(
            prediction_id=prediction_id,
            request_id=request_id,
            model=result.student.identity(),
            label=top.label,
            probabilities=top.probabilities,
            confidence=top.confidence,
            refer=top.refer,
            gradable=top.gradable,
            reason=top.reason,
            ood_score=top.ood_score,
            second_opinion=_second_opinion(top.second_opinion),
            frames=frames,
            volume_id=upload.volume_id,
            input=InputInfo(
                format=upload.format,
                width=upload.width,
                height=upload.height,
                frames=len(upload.frames),
                sha256=upload.input_sha256,
            ),
            timing_ms=Timing(
                decode=round(decode_ms, 3),
                queue=round(result.queue_ms, 3),
                inference=round(result.inference_ms, 3),
                total=0.0,  # set when the answer is complete
            ),
        )

    async def explain(self, upload: DecodedUpload, answer: ClassifyResponse) -> None:
        """Grad-CAM for the answered label (and the teacher's, when it ran), added to `answer`. A volume
        is explained on the frame where its label is strongest: the frame that decided it. The DICOM
        node asks this of a series' most severe answer only, after classifying all of them."""
        classifier = self.classifier
        frames = answer.frames if answer.frames and len(answer.frames) > 1 else None
        frame_index = shown_index = None
        if frames is not None:
            # Among the frames that decided it: ungradable ones never do (service/inference/volume.py).
            deciding = [i for i, frame in enumerate(frames) if frame.gradable is not False] or range(
                len(frames)
            )
            frame_index = shown_index = max(deciding, key=lambda i: frames[i].probabilities[answer.label])
        image = upload.frames[frame_index or 0]
        opinion = answer.second_opinion
        try:
            answered_by = classifier.student_by_sha256(answer.model.sha256).bundle
            student = await self.explainer.explain(answered_by, image, answer.label)
            teacher = None
            if opinion is not None and classifier.teacher is not None:
                teacher = await self.explainer.explain(classifier.teacher.loaded.bundle, image, opinion.label)
        except ExplainerBusy as exc:
            raise Problem("overloaded", str(exc), reason="queue_full", headers={"Retry-After": "1"}) from None
        answer.explanation = Explanation(**student.to_dict(), frame_index=shown_index)
        if teacher is not None:
            opinion.explanation = Explanation(**teacher.to_dict(), frame_index=shown_index)


def _no_dicom_source(upload: DecodedUpload) -> Problem:
    if upload.format != "dicom":
        detail = (
            f"a DICOM Structured Report (Accept: application/dicom) references the DICOM image it reports "
            f"on; this upload is {upload.format.upper()}: send a DICOM file, or accept application/json"
        )
    else:  # names the attributes, never their values
        detail = (
            "a DICOM Structured Report (Accept: application/dicom) must reference the upload by its "
            "StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and SOPClassUID, and one of them is "
            "missing or not a valid UID: accept application/json"
        )
    return Problem("not-acceptable", detail, reason="not_acceptable")


def _second_opinion(opinion: Opinion | None) -> SecondOpinion | None:
    if opinion is None:
        return None
    values = {
        "model": opinion.model,
        "label": opinion.label,
        "probabilities": opinion.probabilities,
        "confidence": opinion.confidence,
        "agrees": opinion.agrees,
    }
    if opinion.frames_reviewed is not None:  # volumes only: absent from a frame's answer
        values["frames_reviewed"] = opinion.frames_reviewed
    return SecondOpinion(**values)
