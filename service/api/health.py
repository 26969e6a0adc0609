"""Liveness and readiness.

live: the process answers; no dependency is checked, so a database outage never restarts replicas.
ready: the models are loaded, warmed up and golden-checked, and the record sink can take records (its
writer's tasks run: one restarting after a failure is named, service/db/supervisor.py).
Both answer anyone, so they say ready or not and where records go, never which models (their names,
versions and hashes are for key holders: GET /models).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import StateDep
from service.problems import PROBLEM_MEDIA_TYPE, Problem, ProblemDetail

__all__ = ["router"]

router = APIRouter(prefix="/health", tags=["health"])


class HealthResponse(BaseModel):
    status: str = Field(examples=["ready"])
    records: str | None = Field(
        None,
        description="where records go now: database, or spool while the database is down or stalled "
        "(degraded: answers still go out, each on record in the fsync'd spool)",
        examples=["database"],
    )


@router.get("/live", response_model=HealthResponse, summary="Liveness: the process is up")
async def live() -> HealthResponse:
    return HealthResponse(status="live")


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="Readiness: models warmed up and golden-checked, records can be stored",
    responses={
        503: {"model": ProblemDetail, "description": "Not ready", "content": {PROBLEM_MEDIA_TYPE: {}}}
    },
)
async def ready(state: StateDep) -> HealthResponse:
    if not state.ready:
        raise Problem("not-ready", "the models are not loaded and verified yet", headers={"Retry-After": "5"})
    if not await state.sink.ready():
        down = getattr(state.sink, "not_running", None)
        detail = (
            f"the record writer is not running (task {', '.join(down)} restarting after a failure)"
            if down
            else "prediction records cannot be stored right now"
        )
        raise Problem("not-ready", detail, headers={"Retry-After": "5"})
    records = "spool" if getattr(state.sink, "degraded", False) else "database"
    return HealthResponse(status="ready", records=records)
