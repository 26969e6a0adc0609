"""The shape of the code, read from its syntax trees: the import graph (every import, those inside
functions too), its cycles, the imports that reach up into the API, imports deferred into functions,
and the longest functions. tests/test_layers.py checks the rules on this graph; the report is the
before/after figure of a refactor:

    python -m kdoct_testing.code_shape [--root CHECKOUT] [--longest 15]
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PACKAGES",
    "CodeShape",
    "Function",
    "Import",
    "read_shape",
    "strongly_connected",
]

PACKAGES = ("kdoct", "model_training", "service", "kdoct_testing", "bench")
# Modules that compose the API (or run it) and so may import it; everything else in service/ sits below.
API_FLOOR = ("service.api", "service.app", "service.__main__", "service.commands")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module or package, its parents included
    line: int
    project: bool  # one of PACKAGES
    in_function: bool  # deferred: runs when the function does, not at import
    type_checking: bool  # under `if TYPE_CHECKING:`, never run


@dataclass(frozen=True)
class Function:
    module: str
    name: str  # qualified: Class.method, outer.<locals>.inner
    line: int
    lines: int


@dataclass
class CodeShape:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)

    def graph(self, *, top_level_only: bool = False) -> dict[str, set[str]]:
        """module -> the project modules it imports (run-time imports; TYPE_CHECKING ones left out)."""
        graph: dict[str, set[str]] = {name: set() for name in self.modules}
        for item in self.imports:
            if not item.project or item.type_checking or (top_level_only and item.in_function):
                continue
            if item.target in self.modules and item.target != item.importer:
                graph[item.importer].add(item.target)
        return graph

    def cycles(self, *, top_level_only: bool = False) -> list[list[str]]:
        return [c for c in strongly_connected(self.graph(top_level_only=top_level_only)) if len(c) > 1]

    def upward_imports(self) -> list[Import]:
        """Modules of service/ below the API floor that import service.api."""
        return [
            item
            for item in self.imports
            if _under(item.importer, ("service",))
            and not _under(item.importer, API_FLOOR)
            and _under(item.target, ("service.api",))
        ]

    def deferred_imports(self) -> list[tuple[str, int]]:
        """(module, line) of every import statement inside a function, of any module."""
        return sorted({(item.importer, item.line) for item in self.imports if item.in_function})

    def longest(self, count: int) -> list[Function]:
        return sorted(self.functions, key=lambda f: (-f.lines, f.module, f.line))[:count]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_shape(root: Path, packages: tuple[str, ...] = PACKAGES) -> CodeShape:
    modules = {
        module_name(root, path): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
        if ".venv" not in path.parts
    }
    shape = CodeShape(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        _Reader(shape, name, packages).visit(tree)
    return shape


class _Reader(ast.NodeVisitor):
    def __init__(self, shape: CodeShape, module: str, packages: tuple[str, ...]) -> None:
        self.shape, self.module, self.packages = shape, module, packages
        self.scope: list[str] = []
        self.functions_deep = 0
        self.type_checking = 0

    def visit_If(self, node: ast.If) -> None:
        guarded = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        guarded |= isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qualified = ".".join(self.scope + [node.name])
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        self.shape.functions.append(
            Function(self.module, qualified, node.lineno, node.end_lineno - first + 1)
        )
        self.scope += [node.name, "<locals>"]
        self.functions_deep += 1
        self.generic_visit(node)
        self.functions_deep -= 1
        del self.scope[-2:]

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self._add(node, [alias.name for alias in node.names])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            raise AssertionError(
                f"{self.module}:{node.lineno}: a relative import (the project imports absolutely, so rules "
                "can see it)"
            )
        if node.module:
            self._add(node, [node.module] + [f"{node.module}.{alias.name}" for alias in node.names])

    def _add(self, node: ast.stmt, names: list[str]) -> None:
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: the parents count too.
        targets = {
            ".".join(name.split(".")[:depth]) for name in names for depth in range(1, name.count(".") + 2)
        }
        for target in sorted(targets):
            project = target.split(".")[0] in self.packages
            self.shape.imports.append(
                Import(
                    self.module, target, node.lineno, project, self.functions_deep > 0, self.type_checking > 0
                )
            )


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
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


def report(shape: CodeShape, longest: int) -> str:
    lines = [f"modules: {len(shape.modules)}"]
    for label, top in (("import cycles, every import", False), ("import cycles, top-level imports", True)):
        cycles = shape.cycles(top_level_only=top)
        lines.append(f"{label}: {len(cycles)}")
        lines += [f"  {' <-> '.join(cycle)}" for cycle in cycles]
    upward = {(item.importer, item.line): item.target for item in shape.upward_imports()}  # deepest target
    lines.append(f"import statements reaching service.api from below the API: {len(upward)}")
    lines += [f"  {importer}:{line} imports {target}" for (importer, line), target in sorted(upward.items())]
    deferred = shape.deferred_imports()
    by_package: dict[str, int] = {}
    for importer, _line in deferred:
        package = importer.split(".")[0]
        by_package[package] = by_package.get(package, 0) + 1
    lines.append(f"import statements inside functions: {len(deferred)} {dict(sorted(by_package.items()))}")
    lengths = sorted(f.lines for f in shape.functions)
    lines.append(f"functions: {len(lengths)}, median {lengths[len(lengths) // 2]} lines")
    lines.append(f"the {longest} longest:")
    lines += [f"  {f.lines:4d}  {f.module}.{f.name} (line {f.line})" for f in shape.longest(longest)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--longest", type=int, default=15)
    args = parser.parse_args()
    print(report(read_shape(args.root.resolve()), args.longest))


if __name__ == "__main__":
    main()
