"""The layers of the code, checked from the imports themselves: kdoct at the ground, training and
serving never touching, the records (service/db) below request handling, nothing below the API
importing it, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kdoct_testing.code_shape import API_FLOOR, read_shape

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kdoct", "model_training", "service", "kdoct_testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Project modules imported by ``path``; top-level ones only (what runs at import), or all."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(
                f"{path}: a relative import (the project imports absolutely, so rules can see it)"
            )
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: count the parents too.
    with_parents = {
        ".".join(name.split(".")[:depth]) for name in found for depth in range(1, name.count(".") + 2)
    }
    return {name for name in with_parents if name.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


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
def test_a_layer_never_imports_what_sits_above_it(modules, importer: str, forbidden: tuple[str, ...]) -> None:
    offending = [
        f"{name} imports {target}"
        for name, path in modules.items()
        if name == importer or name.startswith(importer + ".")
        for target in _imports(path, top_level_only=False)
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert offending == []


def test_nothing_below_the_api_floor_imports_the_api() -> None:
    """The API floor (service.api, service.app, service.__main__, service.commands) composes the
    service; every other module of service/ sits below it and never imports service.api, not even
    for type checking: what they share with the routes (the answer, service/answer.py) lives below."""
    assert API_FLOOR == ("service.api", "service.app", "service.__main__", "service.commands")
    upward = [f"{i.importer}:{i.line} imports {i.target}" for i in read_shape(ROOT).upward_imports()]
    assert upward == []


def test_no_module_level_import_cycles(modules) -> None:
    graph = {
        name: {
            target for target in _imports(path, top_level_only=True) if target in modules and target != name
        }
        for name, path in modules.items()
    }
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (deep packages would overflow the recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components
