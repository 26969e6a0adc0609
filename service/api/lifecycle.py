"""The model lifecycle over HTTP (docs/LIFECYCLE.md): a candidate's agreement (scope read), and its
promotion and the rollback (scope admin), through the same functions as `python -m service model`
(service/lifecycle/promotion.py). Only the candidate this service shadows (KDOCT_SHADOW_BUNDLE) can be
promoted here: a client names it by sha256, never by a path on the server."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.db.model_ledgers import EventConflict, ModelEventRow
from service.deps import ReadClientDep, StateDep
from service.lifecycle import promotion
from service.problems import Problem
from service.security import Client, require_scope

__all__ = ["router"]

router = APIRouter(prefix="/models", tags=["models"])

AdminClientDep = Annotated[Client, Depends(require_scope("admin"))]
Sha256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="the candidate bundle's sha256")]


class Sensitivity(BaseModel):
    labelled: int = Field(description="clinician labels of this class on shadowed predictions")
    value: float | None
    low: float | None = Field(description="Wilson 95 % interval")
    high: float | None


class CandidateAgreement(BaseModel):
    candidate_sha256: str
    shadowed: int = Field(description="shadow results stored (each frame of a volume, and the volume)")
    agreement: float | None = Field(description="share where the candidate's label is the serving student's")
    kappa: float | None = Field(description="Cohen's kappa against the serving student")
    teacher_compared: int
    teacher_agreement: float | None
    teacher_kappa: float | None
    confusion: dict[str, dict[str, int]] = Field(
        description="serving student's label -> candidate's -> count"
    )
    gate: dict[str, int] = Field(description="the safety gate's verdicts, 'student/candidate' -> count")
    sensitivity_on_feedback: dict[str, Sensitivity]
    thresholds: dict[str, float]
    short_of_thresholds: list[str] = Field(
        description="why `model promote` would refuse; empty: it would not"
    )


class ModelEventOut(BaseModel):
    sequence: int
    created_at: datetime
    action: str
    actor: str
    from_sha256: str
    to_sha256: str
    to_name: str
    to_version: str
    evidence: dict[str, Any]


def _event(event: ModelEventRow) -> ModelEventOut:
    return ModelEventOut.model_validate(event, from_attributes=True)


async def _run(work, *args, **kwargs):
    try:
        return await run_in_threadpool(work, *args, **kwargs)
    except (promotion.LifecycleRefused, EventConflict) as exc:
        raise Problem("conflict", str(exc)) from None
    except SQLAlchemyError as exc:
        raise Problem(
            "not-ready", f"the model events cannot be read or written now ({type(exc).__name__})",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip


@router.get(
    "/candidates/{sha256}/agreement",
    response_model=CandidateAgreement,
    summary="A candidate's shadow record: agreement, kappa, confusion, gate, sensitivity on feedback",
)
async def agreement(sha256: Sha256, state: StateDep, _: ReadClientDep) -> CandidateAgreement:
    settings = state.settings
    evidence = await _run(
        promotion.evidence_against_serving, state.records.engine, sha256, settings.student_bundle,
        promotion.Thresholds.from_settings(settings),
    )  # fmt: skip
    return CandidateAgreement.model_validate(evidence)


@router.post(
    "/candidates/{sha256}/promote",
    response_model=ModelEventOut,
    summary="Promote the shadowing candidate on every worker (409 when its evidence falls short)",
)
async def promote(sha256: Sha256, state: StateDep, client: AdminClientDep) -> ModelEventOut:
    settings = state.settings
    if settings.shadow_bundle is None:
        raise Problem(
            "not-found", "this service shadows no candidate (KDOCT_SHADOW_BUNDLE): nothing to promote"
        )
    event = await _run(
        promotion.promote, state.records.engine, state.audit_key, settings.shadow_bundle,
        actor=f"api:{client.id or 'anonymous'}", thresholds=promotion.Thresholds.from_settings(settings),
        configured=settings.student_bundle, expected_sha256=sha256,
    )  # fmt: skip
    return _event(event)


@router.post(
    "/rollback", response_model=ModelEventOut, summary="Return every worker to the student served before"
)
async def rollback(state: StateDep, client: AdminClientDep) -> ModelEventOut:
    event = await _run(
        promotion.rollback, state.records.engine, state.audit_key,
        actor=f"api:{client.id or 'anonymous'}", configured=state.settings.student_bundle,
    )  # fmt: skip
    return _event(event)
