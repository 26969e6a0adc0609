"""POST /classify: one B-scan (PNG, JPEG, TIFF, BMP) or an OCT DICOM (single frame or a volume).

The route asks the pipeline (service/pipeline.py) for the answer, puts it on record (service/records.py
Recorder), and returns it; FastAPI serialises it against the ClassifyResponse schema. A DICOM upload
asked for `Accept: application/dicom` gets the same answer as a DICOM SR (service/dicom_sr.py),
built after the same recording: what is stored never depends on the form of the answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from service.answer import ClassifyResponse
from service.api.accept import JSON_MEDIA_TYPE, Accept
from service.deps import ClientDep, PipelineDep, RecorderDep, TicketDep
from service.dicom_sr import DICOM_MEDIA_TYPE
from service.inference.second_opinion import Policy
from service.problems import PROBLEM_MEDIA_TYPE, ProblemDetail

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
    406: _problem(406, "Not acceptable", "not-acceptable",
                  "a DICOM Structured Report (Accept: application/dicom) references the DICOM image it "
                  "reports on; this upload is PNG: send a DICOM file, or accept application/json"),
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


SR_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            DICOM_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "example": "(a DICOM Part 10 file: Comprehensive SR, TID 1500 Measurement Report)",
            }
        },
        "description": "JSON, or for a DICOM upload with `Accept: application/dicom` a DICOM Comprehensive "
        "SR of the same answer (docs/API.md, DICOM Structured Report)",
    }
}


AnswerForm = Literal["json", "dicom", "dicom-or-json"]


def negotiate(accept: str | None) -> AnswerForm:
    """The form of the answer for an Accept header: "dicom" (an SR, else 406), "dicom-or-json" (an SR
    when the upload is DICOM, else JSON) or "json". The SR is answered only when named with a q above 0
    and at least JSON's (service/api/accept.py); everything else, no header and headers naming neither
    included, is JSON, as it always was."""
    parsed = Accept.parse(accept)
    if not parsed.prefers(DICOM_MEDIA_TYPE):
        return "json"
    return "dicom-or-json" if parsed.quality(JSON_MEDIA_TYPE) > 0 else "dicom"


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    # Optional parts the answer does not carry (an explanation not asked for, a frame's
    # frames_reviewed) are left out rather than sent as null.
    response_model_exclude_unset=True,
    responses={**SR_RESPONSE, **ERROR_RESPONSES},
    summary="Classify an OCT B-scan or DICOM volume",
    description=(
        "Answers calibrated probabilities for every class, the label, `refer` (human review advised) and, "
        "when the teacher was asked, its second opinion. The prediction is on record before it is answered. "
        "DICOM volumes get one result per frame plus a volume result (most severe frame, see docs/API.md). "
        "`Accept: application/dicom` (DICOM uploads only, else 406): the answer as a DICOM Comprehensive SR "
        "referencing the uploaded instance."
    ),
)
async def classify(
    request: Request,
    pipeline: PipelineDep,
    recorder: RecorderDep,
    client_id: ClientDep,
    ticket: TicketDep,
    file: Annotated[UploadFile, File(description=FILE_DESCRIPTION)],
    second_opinion: Annotated[Policy | None, Query(description=POLICY_DESCRIPTION)] = None,
    explain: Annotated[bool, Query(description=EXPLAIN_DESCRIPTION)] = False,
) -> ClassifyResponse | Response:
    form = negotiate(request.headers.get("accept"))
    data = await file.read()
    classified = await pipeline.run(
        data,
        ticket=ticket,
        policy=second_opinion,
        explain=explain,
        request_id=request.state.request_id,
        started=request.state.started,
        require_dicom_source=form == "dicom",
    )
    answer = classified.answer
    await recorder.record([answer], client_id=client_id)
    if form != "json" and classified.dicom_source is not None:
        # Built after recording, like the JSON encoding.
        report = await pipeline.dicom_report(classified)
        return Response(
            report,
            media_type=DICOM_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="kdoct-sr-{answer.prediction_id}.dcm"'},
        )
    return answer
