"""The query API over the prediction records: GET /predictions/{id}, GET /predictions (filters,
cursor pages newest first), POST /predictions/{id}/feedback (the clinician's label). No update, no
delete: predictions are append-only. Every prediction a GET answers with is first logged as read, by
whom (service/db/queries.py: log_reads); a read that cannot be logged is not answered (503)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service import fhir, prometheus
from service.answer import PredictionOut
from service.api.accept import Accept
from service.db import queries
from service.db.tables import Prediction
from service.deps import FeedbackClientDep, ReadClientDep, RecorderDep, SessionsDep, SettingsDep
from service.problems import Problem

__all__ = ["router"]

router = APIRouter(prefix="/predictions", tags=["records"])


class PredictionPageOut(BaseModel):
    items: list[PredictionOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


class FeedbackIn(BaseModel):
    label: str = Field(min_length=1, max_length=32, examples=["drusen"])
    note: str | None = Field(None, max_length=4000, examples=["small drusen, nasal"])


class FeedbackOut(BaseModel):
    id: uuid.UUID
    prediction_id: uuid.UUID
    label: str
    note: str | None
    created_at: datetime
    client_id: str | None


async def _query(work):
    """Run a database call off the event loop. A value the caller sent that the database cannot take
    is a 400/422; a database that does not answer is a 503 (the records are safe, reads must wait)."""
    try:
        return await run_in_threadpool(work)
    except SQLAlchemyError:
        raise Problem(
            "not-ready", "the prediction database is unavailable: try again shortly",
            reason="record_unavailable", headers={"Retry-After": "5"},
        ) from None  # fmt: skip


def _out(row: Prediction) -> PredictionOut:
    return PredictionOut.model_validate(row, from_attributes=True)


def _wants_fhir(request: Request, format: str | None) -> bool:
    """FHIR when asked by the query (`format=fhir`, for links and tools that cannot set headers) or by
    `Accept: application/fhir+json` weighed at least as high as JSON (service/api/accept.py: so
    `application/fhir+json;q=0, application/json` is JSON); an explicit `format=json` wins over the header."""
    if format is not None:
        return format == "fhir"
    return Accept.parse(request.headers.get("accept")).prefers(fhir.FHIR_MEDIA_TYPE)


_FHIR_RESPONSE = {
    200: {
        "description": "PredictionOut, or with `Accept: application/fhir+json` / `format=fhir` an HL7 FHIR "
        "R4 Bundle (type collection): DiagnosticReport, Observations, model Devices (docs/API.md)",
        "content": {fhir.FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}},
    }
}


@router.get(
    "/{prediction_id}",
    response_model=PredictionOut,
    responses=_FHIR_RESPONSE,
    summary="One prediction record",
)
async def get_prediction(
    prediction_id: uuid.UUID,
    request: Request,
    sessions: SessionsDep,
    recorder: RecorderDep,
    client: ReadClientDep,
    format: Annotated[
        Literal["json", "fhir"] | None,
        Query(description="fhir: the HL7 FHIR R4 Bundle, as with Accept: application/fhir+json"),
    ] = None,
) -> PredictionOut | Response:
    reader = recorder.request_id_hash(request.state.request_id)

    def load():
        with sessions() as session:
            row = queries.get_prediction(session, prediction_id)
            if row is not None:
                route = "/predictions/{prediction_id}"
                queries.log_reads(session, [row], client_id=client.id, request_id=reader, route=route)
            return row

    await recorder.caught_up()
    row = await _query(load)
    if row is None:
        raise Problem("not-found", f"no prediction {prediction_id} on record")
    record = _out(row)
    if _wants_fhir(request, format):
        # Mapped from the validated PredictionOut, so both forms show the same record, read and logged once.
        return Response(json.dumps(fhir.prediction_bundle(record)), media_type=fhir.FHIR_MEDIA_TYPE)
    return record


@router.get("", response_model=PredictionPageOut, summary="Prediction records, newest first")
async def list_predictions(
    request: Request,
    sessions: SessionsDep,
    recorder: RecorderDep,
    client: ReadClientDep,
    created_from: Annotated[datetime | None, Query(alias="from", description="inclusive, ISO 8601")] = None,
    created_to: Annotated[datetime | None, Query(alias="to", description="exclusive, ISO 8601")] = None,
    label: str | None = None,
    model_version: str | None = None,
    refer: bool | None = None,
    gradable: Annotated[bool | None, Query(description="the safety gate's verdict")] = None,
    request_id: Annotated[
        str | None,
        Query(max_length=128, description="the X-Request-ID a prediction was made under, as you sent it"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
    cursor: str | None = None,
) -> PredictionPageOut:
    stored = recorder.request_id_hash(request_id) if request_id is not None else None
    where = queries.PredictionFilter(
        created_from, created_to, label, model_version, refer, stored, gradable=gradable
    )
    reader = recorder.request_id_hash(request.state.request_id)
    await recorder.caught_up()

    def load():
        with sessions() as session:
            page = queries.list_predictions(session, where, limit=limit, cursor=cursor)
            queries.log_reads(
                session, page.items, client_id=client.id, request_id=reader, route="/predictions"
            )
            return page

    try:
        page = await _query(load)
    except ValueError as exc:
        raise Problem("bad-request", str(exc), reason="bad_request") from None
    return PredictionPageOut(items=[_out(row) for row in page.items], next_cursor=page.next_cursor)


@router.post(
    "/{prediction_id}/feedback",
    response_model=FeedbackOut,
    status_code=201,
    summary="Record the clinician's label for a prediction",
)
async def add_feedback(
    prediction_id: uuid.UUID,
    body: FeedbackIn,
    sessions: SessionsDep,
    recorder: RecorderDep,
    settings: SettingsDep,
    client: FeedbackClientDep,
) -> FeedbackOut:
    await recorder.caught_up()

    def store():
        with sessions() as session:
            prediction = queries.get_prediction(session, prediction_id)
            if prediction is None:
                return None, None
            # What the metric needs, read before add_feedback's commit expires the row.
            answered = (prediction.model_name, prediction.label, prediction.confidence, prediction.gradable)
            return queries.add_feedback(session, prediction_id, body.label, body.note, client.id), answered

    try:
        feedback, answered = await _query(store)
    except ValueError as exc:
        raise Problem("validation-error", str(exc), reason="bad_request") from None
    if feedback is None:
        raise Problem("not-found", f"no prediction {prediction_id} on record (yet)")
    model, predicted, confidence, gradable = answered
    # Both labels are the model's classes (add_feedback refuses any other): bounded label values.
    prometheus.count_feedback(
        model, predicted, body.label,
        confident=confidence >= settings.second_opinion_threshold, gradable=gradable,
    )  # fmt: skip
    return FeedbackOut.model_validate(feedback, from_attributes=True)
