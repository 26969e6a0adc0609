"""POST /classify: one B-scan (PNG, JPEG, TIFF, BMP) or an OCT DICOM (single frame or a volume)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from service import metrics
from service.api.schemas import ClassifyResponse, ProblemDetail
from service.deps import ClassifierDep, ClientDep, SinkDep
from service.explain import Explainer, ExplainerBusy
from service.imaging import DecodedUpload
from service.inference.batcher import BatcherClosed, InferenceError, QueueFull
from service.inference.classifier import Classification, Classifier, Result
from service.inference.second_opinion import Policy, outcome
from service.problems import PROBLEM_MEDIA_TYPE, Problem
from service.records import PredictionRecord, RecordUnavailable, new_prediction_id

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["classification"])


def _problem(status: int, description: str, slug: str, detail: str) -> dict[str, Any]:
    example = {
        "type": f"https://kdoct.dev/problems/{slug}",
        "title": description,
        "status": status,
        "detail": detail,
    }
    return {
        "model": ProblemDetail,
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"example": example}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: _problem(413, "Upload or image too large", "payload-too-large",
                  "the request body exceeds 67108864 bytes (KDOCT_MAX_UPLOAD_BYTES)"),
    415: _problem(415, "Unsupported media type", "unsupported-media-type",
                  "GIF uploads are not accepted: send PNG, JPEG, TIFF, BMP or DICOM"),
    422: _problem(422, "Invalid image or request", "invalid-image",
                  "the JPEG pixel data is truncated or corrupt: image file is truncated"),
    503: _problem(503, "Overloaded, not ready, or the prediction could not be recorded", "overloaded",
                  "the queue of model student is full (256 requests)"),
}  # fmt: skip

FILE_DESCRIPTION = (
    "One OCT B-scan: PNG, JPEG, TIFF or BMP (8- or 16-bit, gray or RGB), or a DICOM file "
    "(single frame, or a multi-frame volume such as Ophthalmic Tomography Image Storage). The format is "
    "decided from the bytes, not the file name or content type."
)
EXPLAIN_DESCRIPTION = (
    "Add a Grad-CAM heatmap for the predicted class (`explanation`: the raw low-resolution map and a PNG "
    "overlay on the B-scan), and for the teacher's label when the teacher ran. Computed with the PyTorch "
    "weights after the prediction, off the batched path: it adds tens of milliseconds (docs/BENCHMARKS.md). "
    "Volumes: the frame where the label is strongest. Heatmaps are not stored."
)
POLICY_DESCRIPTION = (
    "Override the teacher second-opinion policy for this request: never, auto (teacher reviews results "
    "below the confidence threshold) or always (needs a teacher bundle, else 422)."
)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    summary="Classify an OCT B-scan or DICOM volume",
    description=(
        "Answers calibrated probabilities for every class, the label, `refer` (human review advised) and, "
        "when the teacher was asked, its second opinion. The prediction is on record before it is answered. "
        "DICOM volumes get one result per frame plus a volume result (most severe frame, see docs/API.md)."
    ),
)
async def classify(
    request: Request,
    classifier: ClassifierDep,
    sink: SinkDep,
    client_id: ClientDep,
    file: Annotated[UploadFile, File(description=FILE_DESCRIPTION)],
    second_opinion: Annotated[Policy | None, Query(description=POLICY_DESCRIPTION)] = None,
    explain: Annotated[bool, Query(description=EXPLAIN_DESCRIPTION)] = False,
) -> JSONResponse:
    policy = second_opinion or classifier.policy
    if policy == "always" and classifier.teacher is None:
        raise Problem(
            "second-opinion-unavailable",
            "second_opinion=always needs a teacher model, and this service has none (KDOCT_TEACHER_BUNDLE)",
            reason="bad_request",
        )
    data = await file.read()
    loop = asyncio.get_running_loop()
    decode_began = time.perf_counter()
    upload, student_inputs = await loop.run_in_executor(classifier.pool, classifier.prepare, data)
    decode_ms = (time.perf_counter() - decode_began) * 1000.0
    try:
        result = await classifier.classify(upload, student_inputs, policy)
    except QueueFull as exc:
        raise Problem("overloaded", str(exc), reason="queue_full", headers={"Retry-After": "1"}) from None
    except BatcherClosed as exc:
        raise Problem("not-ready", str(exc), reason="not_ready", headers={"Retry-After": "5"}) from None
    except InferenceError as exc:
        raise Problem(
            "inference-failed", str(exc), reason="inference_failed", headers={"Retry-After": "1"}
        ) from None
    request_id = request.state.request_id
    timing = {
        "decode": round(decode_ms, 3),
        "queue": round(result.queue_ms, 3),
        "inference": round(result.inference_ms, 3),
        "total": 0.0,
    }
    # Records keep only a keyed hash of the client's X-Request-ID: it may hold an identifier.
    stored_request_id = request.app.state.audit_key.request_id_hash(request_id)
    records, body = _answer(classifier, upload, result, request_id, stored_request_id, client_id, timing)
    if explain:
        await _add_explanations(request.app.state.explainer, classifier, upload, result, body)
    timing["total"] = round((time.perf_counter() - request.state.started) * 1000.0, 3)
    try:
        await sink.record(records)
    except RecordUnavailable as exc:
        raise Problem(
            "record-unavailable", str(exc), reason="record_unavailable", headers={"Retry-After": "5"}
        ) from None
    except Exception as exc:  # noqa: BLE001 - never answer a prediction that is not on record
        log.error("prediction sink failed", exc_info=exc)
        raise Problem(
            "record-unavailable", "the prediction could not be recorded", reason="record_unavailable",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    _count(classifier, body)
    return JSONResponse(body)


def _answer(
    classifier: Classifier,
    upload: DecodedUpload,
    result: Classification,
    request_id: str,
    stored_request_id: str,
    client_id: str | None,
    timing: dict[str, float],
) -> tuple[list[PredictionRecord], dict[str, Any]]:
    """The records to store and the JSON body; `timing` is shared so records get the final total.
    The body echoes the client's request id; the records hold `stored_request_id`, its keyed hash."""
    student = classifier.student.loaded.identity()
    teacher = classifier.teacher.loaded.identity() if classifier.teacher and result.teacher_used else None
    common = {
        "request_id": stored_request_id,
        "client_id": client_id,
        "model_name": student["name"],
        "model_version": student["version"],
        "model_sha256": student["sha256"],
        "teacher_model_name": teacher and teacher["name"],
        "teacher_model_version": teacher and teacher["version"],
        "teacher_model_sha256": teacher and teacher["sha256"],
        "input_sha256": upload.input_sha256,
        "format": upload.format,
        "width": upload.width,
        "height": upload.height,
        "volume_id": upload.volume_id,
        "timing_ms": timing,
    }

    def record(item: Result, frame_index: int | None) -> PredictionRecord:
        return PredictionRecord(
            id=new_prediction_id(),
            probabilities=item.probabilities,
            label=item.label,
            confidence=item.confidence,
            refer=item.refer,
            second_opinion=item.second_opinion,
            frame_index=frame_index,
            **common,
        )

    is_dicom = upload.format == "dicom"
    frame_records = [record(item, index if is_dicom else None) for index, item in enumerate(result.frames)]
    records = list(frame_records)
    top, top_record = result.frames[0], frame_records[0]
    if result.volume is not None:
        top, top_record = result.volume, record(result.volume, None)
        records.append(top_record)
    frames = None
    if is_dicom:
        frames = [
            {
                "frame_index": index,
                "prediction_id": str(frame_record.id),
                "label": item.label,
                "probabilities": item.probabilities,
                "confidence": item.confidence,
                "refer": item.refer,
                "second_opinion": item.second_opinion,
            }
            for index, (item, frame_record) in enumerate(zip(result.frames, frame_records, strict=True))
        ]
    body = {
        "prediction_id": str(top_record.id),
        "request_id": request_id,
        "model": student,
        "label": top.label,
        "probabilities": top.probabilities,
        "confidence": top.confidence,
        "refer": top.refer,
        "second_opinion": top.second_opinion,
        "frames": frames,
        "volume_id": upload.volume_id,
        "input": {
            "format": upload.format,
            "width": upload.width,
            "height": upload.height,
            "frames": len(upload.frames),
            "sha256": upload.input_sha256,
        },
        "timing_ms": timing,
    }
    return records, body


async def _add_explanations(
    explainer: Explainer,
    classifier: Classifier,
    upload: DecodedUpload,
    result: Classification,
    body: dict[str, Any],
) -> None:
    """Grad-CAM for the answered label (and the teacher's), into `body` only: records never hold them."""
    top = result.volume or result.frames[0]
    # A volume is explained on the frame where its label is strongest: the frame that decided it.
    frame_index = max(range(len(result.frames)), key=lambda i: result.frames[i].probabilities[top.label])
    image = upload.frames[frame_index]
    shown_index = frame_index if result.volume is not None else None
    try:
        student = await explainer.explain(classifier.student.loaded.bundle, image, top.label)
        teacher = None
        if top.second_opinion is not None and classifier.teacher is not None:
            teacher_bundle = classifier.teacher.loaded.bundle
            teacher = await explainer.explain(teacher_bundle, image, top.second_opinion["label"])
    except ExplainerBusy as exc:
        raise Problem("overloaded", str(exc), reason="queue_full", headers={"Retry-After": "1"}) from None
    body["explanation"] = {**student.to_dict(), "frame_index": shown_index}
    if teacher is not None:
        # A copy: the opinion dict is also in the prediction records, which never hold heatmaps.
        body["second_opinion"] = {
            **body["second_opinion"],
            "explanation": {**teacher.to_dict(), "frame_index": shown_index},
        }


def _count(classifier: Classifier, body: dict[str, Any]) -> None:
    """Metrics per answered request (a volume counts once, by its volume result)."""
    model = classifier.student.loaded.bundle.name
    metrics.PREDICTIONS.labels(model=model, label=body["label"]).inc()
    metrics.PREDICTION_CONFIDENCE.labels(model=model).observe(body["confidence"])
    if body["refer"]:
        metrics.REFERRALS.labels(model=model).inc()
    opinion = body["second_opinion"]
    if opinion is not None:
        metrics.SECOND_OPINIONS.labels(outcome=outcome(body["label"], opinion["label"])).inc()
