"""Annotated dependency aliases: handlers declare what they need and never reach for globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.inference.classifier import Classifier
from service.ingress.budget import Ticket
from service.pipeline import ClassificationPipeline
from service.problems import Problem
from service.records import PredictionSink, Recorder
from service.security import Client, require_scope

__all__ = [
    "ClassifierDep",
    "ClientDep",
    "FeedbackClientDep",
    "PipelineDep",
    "ReadClientDep",
    "RecorderDep",
    "SessionsDep",
    "SettingsDep",
    "SinkDep",
    "TicketDep",
    "get_client",
]


# Plain lookups are `async def` on purpose: FastAPI runs a sync dependency in its thread pool, two
# thread hops per request for a dictionary read (measured on POST /classify, docs/BENCHMARKS.md).


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_pipeline(request: Request) -> ClassificationPipeline:
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None or not request.app.state.ready:
        raise Problem(
            "not-ready", "the models are not loaded yet", reason="not_ready", headers={"Retry-After": "5"}
        )
    return pipeline


async def get_classifier(pipeline: ClassificationPipeline = Depends(get_pipeline)) -> Classifier:
    return pipeline.classifier


async def get_sink(request: Request) -> PredictionSink:
    return request.app.state.sink


async def get_recorder(request: Request) -> Recorder:
    return request.app.state.recorder


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


async def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.records.sessions


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
PipelineDep = Annotated[ClassificationPipeline, Depends(get_pipeline)]
SinkDep = Annotated[PredictionSink, Depends(get_sink)]
RecorderDep = Annotated[Recorder, Depends(get_recorder)]
ClientDep = Annotated[str | None, Depends(get_client)]
TicketDep = Annotated[Ticket, Depends(get_ticket)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
ReadClientDep = Annotated[Client, Depends(require_scope("read"))]
FeedbackClientDep = Annotated[Client, Depends(require_scope("feedback"))]
