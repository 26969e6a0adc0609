"""Annotated dependency aliases: handlers declare what they need and never reach for globals or the
app's state. Every one starts from the typed AppState (service/state.py `get_state`), so a test can
replace any of them with `app.dependency_overrides[get_...] = ...`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.inference.classifier import Classifier
from service.ingress.budget import Ticket
from service.pipeline import ClassificationPipeline
from service.problems import Problem
from service.records import Recorder
from service.security import Client, require_scope
from service.state import AppState, get_state

__all__ = [
    "ClassifierDep",
    "ClientDep",
    "FeedbackClientDep",
    "LoadedClassifierDep",
    "PipelineDep",
    "ReadClientDep",
    "RecorderDep",
    "SessionsDep",
    "SettingsDep",
    "StateDep",
    "TicketDep",
    "get_app_settings",
    "get_classifier",
    "get_client",
    "get_loaded_classifier",
    "get_pipeline",
    "get_recorder",
    "get_sessions",
    "get_state",
    "get_ticket",
]


# Plain lookups are `async def` on purpose: FastAPI runs a sync dependency in its thread pool, two
# thread hops per request for a dictionary read (measured on POST /classify, docs/BENCHMARKS.md).

StateDep = Annotated[AppState, Depends(get_state)]


def _not_loaded() -> Problem:
    return Problem(
        "not-ready", "the models are not loaded yet", reason="not_ready", headers={"Retry-After": "5"}
    )


async def get_app_settings(state: StateDep) -> Settings:
    return state.settings


async def get_pipeline(state: StateDep) -> ClassificationPipeline:
    """The pipeline, once the service is ready (503 before, and once shutting down)."""
    if state.pipeline is None or not state.ready:
        raise _not_loaded()
    return state.pipeline


async def get_classifier(pipeline: ClassificationPipeline = Depends(get_pipeline)) -> Classifier:
    return pipeline.classifier


async def get_loaded_classifier(state: StateDep) -> Classifier:
    """The classifier as soon as the models are loaded, ready or not (503 before): what the Open
    Inference Protocol's model metadata describes."""
    if state.pipeline is None:
        raise _not_loaded()
    return state.pipeline.classifier


async def get_recorder(state: StateDep) -> Recorder:
    return state.recorder


async def get_sessions(state: StateDep) -> sessionmaker[Session]:
    return state.records.sessions


_require_classify = require_scope("classify")


async def get_client(client: Client = Depends(_require_classify)) -> str | None:
    """The id of the client calling POST /classify (401/403 problem+json without a valid key with
    the classify scope); None when KDOCT_AUTH=disabled."""
    return client.id


async def get_ticket(request: Request) -> Ticket:
    """The request's ingress ticket (service/ingress/): what its body and images are charged to. Every
    route that takes a body is a door, so the middleware has issued one before the route runs."""
    ticket = getattr(request.state, "ticket", None)
    if ticket is None:
        raise RuntimeError(f"{request.url.path} is not an ingress door (service/ingress/doors.py)")
    return ticket


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
PipelineDep = Annotated[ClassificationPipeline, Depends(get_pipeline)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
LoadedClassifierDep = Annotated[Classifier, Depends(get_loaded_classifier)]
RecorderDep = Annotated[Recorder, Depends(get_recorder)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
ClientDep = Annotated[str | None, Depends(get_client)]
TicketDep = Annotated[Ticket, Depends(get_ticket)]
ReadClientDep = Annotated[Client, Depends(require_scope("read"))]
FeedbackClientDep = Annotated[Client, Depends(require_scope("feedback"))]
