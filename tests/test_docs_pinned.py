"""The docs are pinned to the code: every `KDOCT_*` variable the code reads is documented in
docs/CONFIGURATION.md and every documented one is read, and the files it cites exist; every module
docs/ARCHITECTURE.md names exists and every module is named there."""

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


# The packages docs/ARCHITECTURE.md maps module by module, in its "Layout" block.
MAPPED_PACKAGES = ("kdoct", "model_training", "service", "kdoct_testing", "bench")
MODULE_NAME = re.compile(r"(?<![\w.])((?:\w+/)*\w+\.py)\b")


def layout_entries() -> dict[str, str]:
    """Top-level entry of the Layout block ("service/", ...) -> its text: the line that starts at the
    left margin and the indented lines below it."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    # service/db/ is mapped in its own section, "The records (service/db/)", drawn as its data flow.
    records = text.split("## The records (service/db/)", 1)[1].split("```", 2)[1]
    for line in block.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0]
            entries[current] = ""
        if current is not None:
            entries[current] += line + "\n"
    entries["service/"] += "\n".join(f"  db/ {line}" for line in records.splitlines())
    return entries


def _package_modules(package: str) -> list[Path]:
    return sorted(
        path.relative_to(ROOT / package)
        for path in (ROOT / package).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )


def test_every_module_is_named_in_the_architecture_map() -> None:
    entries = layout_entries()
    unnamed = []
    for package in MAPPED_PACKAGES:
        text = entries.get(package + "/", "")
        for module in _package_modules(package):
            # Named by its file name, under the names of the folders it sits in.
            named = module.name in MODULE_NAME.findall(text) or module.as_posix() in MODULE_NAME.findall(text)
            folders = [f"{part}/" for part in module.parts[:-1]]
            if not named or any(folder not in text for folder in folders):
                unnamed.append(f"{package}/{module.as_posix()}")
    assert unnamed == [], "docs/ARCHITECTURE.md's Layout does not name these"


def test_every_module_the_architecture_map_names_exists() -> None:
    entries = layout_entries()
    missing = []
    for package in MAPPED_PACKAGES:
        modules = _package_modules(package)
        names = {module.name for module in modules} | {module.as_posix() for module in modules}
        # Paths from a folder inside the package (inference/batcher.py) count by their end.
        suffixes = {"/".join(module.parts[i:]) for module in modules for i in range(len(module.parts))}
        for name in MODULE_NAME.findall(entries.get(package + "/", "")):
            if name not in names | suffixes and not (ROOT / name).is_file():  # or a path from the root
                missing.append(f"{package}/: {name}")
    assert missing == [], "docs/ARCHITECTURE.md's Layout names modules that do not exist"
