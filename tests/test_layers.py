"""The layers of the code, checked from the imports themselves (kdoct_testing.code_shape reads every
import, those inside functions too): kdoct at the ground, training and serving never touching, the
records (service/db) below request handling, nothing below the API importing it, training's stages in
one direction, and no import cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdoct_testing.code_shape import API_FLOOR, CodeShape, read_shape

ROOT = Path(__file__).resolve().parents[1]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.fixture(scope="module")
def shape() -> CodeShape:
    return read_shape(ROOT)


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("kdoct", ("model_training", "service", "kdoct_testing")),
        ("model_training", ("service", "kdoct_testing")),
        ("service", ("model_training", "kdoct_testing")),
        # The records know nothing of requests, keys being checked, or inference.
        ("service.db", ("service.api", "service.security", "service.pipeline", "service.inference")),
        ("service.inference", ("service.api", "service.db", "service.pipeline")),
        # Training's stages depend one way: data <- evaluation, export <- train <- runs <- commands.
        (
            "model_training.data",
            (
                "model_training.evaluation",
                "model_training.export",
                "model_training.train",
                "model_training.runs",
                "model_training.commands",
            ),
        ),
        (
            "model_training.evaluation",
            ("model_training.train", "model_training.runs", "model_training.commands"),
        ),
        ("model_training.export", ("model_training.train", "model_training.runs", "model_training.commands")),
        ("model_training.train", ("model_training.runs", "model_training.commands")),
        ("model_training.runs", ("model_training.commands",)),
    ],
)
def test_a_layer_never_imports_what_sits_above_it(shape, importer: str, forbidden: tuple[str, ...]) -> None:
    # Every import counts here, those only for type checking too.
    offending = [
        f"{item.importer}:{item.line} imports {item.target}"
        for item in shape.imports
        if _under(item.importer, (importer,)) and _under(item.target, forbidden)
    ]
    assert offending == []


def test_nothing_below_the_api_floor_imports_the_api(shape) -> None:
    """The API floor (service.api, service.app, service.__main__, service.commands) composes the
    service; every other module of service/ sits below it and never imports service.api, not even
    for type checking: what they share with the routes (the answer, service/answer.py) lives below."""
    assert API_FLOOR == ("service.api", "service.app", "service.__main__", "service.commands")
    upward = [f"{i.importer}:{i.line} imports {i.target}" for i in shape.upward_imports()]
    assert upward == []


def test_no_import_cycles(shape) -> None:
    """Not at import time, nor when a function runs its own imports (TYPE_CHECKING ones never run)."""
    assert shape.cycles(top_level_only=False) == []
