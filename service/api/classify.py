"""POST /classify: one B-scan (PNG, JPEG, TIFF, BMP) or an OCT DICOM (single frame or a volume).

The route asks the pipeline (service/pipeline.py) for the answer, puts the rows derived from it on
record, and returns it; FastAPI serialises it against the ClassifyResponse schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile

from service.api.recording import count_answer, put_on_record
from service.api.schemas import ClassifyResponse, ProblemDetail
from service.deps import ClientDep, PipelineDep, SinkDep
from service.inference.second_opinion import Policy
from service.problems import PROBLEM_MEDIA_TYPE, Problem
from service.records import prediction_rows

__all__ = ["router"]

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
    # Optional parts the answer does not carry (an explanation not asked for, a frame's
    # frames_reviewed) are left out rather than sent as null.
    response_model_exclude_unset=True,
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
    pipeline: PipelineDep,
    sink: SinkDep,
    client_id: ClientDep,
    file: Annotated[UploadFile, File(description=FILE_DESCRIPTION)],
    second_opinion: Annotated[Policy | None, Query(description=POLICY_DESCRIPTION)] = None,
    explain: Annotated[bool, Query(description=EXPLAIN_DESCRIPTION)] = False,
) -> ClassifyResponse:
    classifier = pipeline.classifier
    policy = second_opinion or classifier.policy
    if policy == "always" and classifier.teacher is None:
        raise Problem(
            "second-opinion-unavailable",
            "second_opinion=always needs a teacher model, and this service has none (KDOCT_TEACHER_BUNDLE)",
            reason="bad_request",
        )
    request_id, started = request.state.request_id, request.state.started
    data = await file.read()
    answer = await pipeline.run(data, policy=policy, explain=explain, request_id=request_id, started=started)
    # Records keep only a keyed hash of the client's X-Request-ID: it may hold an identifier.
    request_id_hash = request.app.state.audit_key.request_id_hash(request_id)
    await put_on_record(sink, prediction_rows(answer, request_id_hash=request_id_hash, client_id=client_id))
    count_answer(classifier.student.loaded.bundle.name, answer)
    return answer
