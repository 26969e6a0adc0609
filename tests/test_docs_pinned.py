"""The docs are pinned to the code: every `KDOCT_*` variable the code reads is documented in
docs/CONFIGURATION.md and every documented one is read, and the files it cites exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
VARIABLE = re.compile(r"KDOCT_[A-Z0-9_]*[A-Z0-9]")
# Python code that may read or set a variable: the packages, the tests, the benchmarks, the migrations.
PYTHON_DIRS = ("kdoct", "model_training", "service", "kdoct_testing", "bench", "tests", "alembic", "docker")
# Shell and container files: `$KDOCT_X` / `${KDOCT_X...}` reads, `KDOCT_X=` / `KDOCT_X:` settings.
OTHER_FILES = ("Makefile", ".ci/run", "docker-compose.yml", "docker/Dockerfile")
OTHER_GLOBS = ("scripts/*.sh", "docker/**/*.sh", "deploy/**/*.yaml")


def _python_variables(path: Path) -> set[str]:
    """String constants that are exactly a variable's name, and keyword arguments named like one
    (`env.update(KDOCT_X=...)`): not Python names such as fhir.KDOCT_BASE, which are constants."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, constants = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            constants.add(node.id)  # its name in `__all__` is a string too
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.fullmatch(node.value):
            found.add(node.value)
        elif isinstance(node, ast.keyword) and node.arg and VARIABLE.fullmatch(node.arg):
            found.add(node.arg)
    return found - constants


def _other_variables(path: Path) -> set[str]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        # Manifests and compose set variables (`KDOCT_X: v`, `- name: KDOCT_X`); comments are not code.
        text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return set(VARIABLE.findall(text))


def read_variables() -> dict[str, set[str]]:
    """variable -> the files that read or set it, Settings' fields under the name of service/config.py."""
    where: dict[str, set[str]] = {}
    prefix = Settings.model_config["env_prefix"]
    for name in Settings.model_fields:
        where.setdefault(prefix + name.upper(), set()).add("service/config.py")
    paths = [p for d in PYTHON_DIRS for p in (ROOT / d).rglob("*.py")]
    for path in paths:
        for variable in _python_variables(path):
            where.setdefault(variable, set()).add(str(path.relative_to(ROOT)))
    others = [ROOT / f for f in OTHER_FILES] + [p for g in OTHER_GLOBS for p in ROOT.glob(g)]
    for path in others:
        for variable in _other_variables(path):
            where.setdefault(variable, set()).add(str(path.relative_to(ROOT)))
    return where


def documented_variables() -> set[str]:
    return set(VARIABLE.findall((ROOT / "docs" / "CONFIGURATION.md").read_text()))


def test_every_variable_the_code_reads_is_documented() -> None:
    undocumented = {
        variable: sorted(files)
        for variable, files in read_variables().items()
        if variable not in documented_variables()
    }
    assert undocumented == {}, "add these to docs/CONFIGURATION.md"


def test_every_documented_variable_is_read() -> None:
    assert documented_variables() - set(read_variables()) == set(), (
        "docs/CONFIGURATION.md names these; nothing reads them"
    )


# A repository file named in a doc: `dir/file.ext`, or a bare `FILE.md` (docs sit in docs/ or the root).
CITED = re.compile(
    r"(?<![\w/.-])((?:[\w-]+/)+[\w.-]+\.(?:md|py|sh|ya?ml|ini|toml|json|csv)|[A-Z][\w-]*\.md)\b"
)
# Paths the docs name that are not the repository's: the service's run-time files and a bundle's own.
NOT_REPOSITORY_FILES = ("var/", "golden/", "safety/", "/")


def cited_files(doc: Path) -> set[str]:
    return {path for path in CITED.findall(doc.read_text()) if not path.startswith(NOT_REPOSITORY_FILES)}


def test_the_configuration_reference_cites_only_files_that_exist() -> None:
    missing = [
        path
        for path in sorted(cited_files(ROOT / "docs" / "CONFIGURATION.md"))
        if not (ROOT / path).exists() and not (ROOT / "docs" / path).exists()
    ]
    assert missing == []
