"""The layers of the code, checked from the imports themselves (kdoct_testing.code_shape reads every
import, those inside functions too): kdoct at the ground, training and serving never touching, the
records (service/db) below request handling, and no import cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdoct_testing.code_shape import CodeShape, read_shape

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


def test_no_import_cycles(shape) -> None:
    """Not at import time, nor when a function runs its own imports (TYPE_CHECKING ones never run)."""
    assert shape.cycles(top_level_only=False) == []
