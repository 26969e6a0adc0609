"""Annotated dependency aliases: handlers declare what they need and never reach for globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.inference.classifier import Classifier
from service.problems import Problem
from service.records import PredictionSink

__all__ = ["ClassifierDep", "ClientDep", "SettingsDep", "SinkDep", "get_client"]


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_classifier(request: Request) -> Classifier:
    classifier = getattr(request.app.state, "classifier", None)
    if classifier is None or not request.app.state.ready:
        raise Problem(
            "not-ready", "the models are not loaded yet", reason="not_ready", headers={"Retry-After": "5"}
        )
    return classifier


def get_sink(request: Request) -> PredictionSink:
    return request.app.state.sink


async def get_client(request: Request) -> str | None:
    """The authenticated client id. Until API keys land (records issue) there is none; that issue
    replaces this with `Authorization: Bearer` verification (401/403 problem+json)."""
    return None


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
SinkDep = Annotated[PredictionSink, Depends(get_sink)]
ClientDep = Annotated[str | None, Depends(get_client)]
