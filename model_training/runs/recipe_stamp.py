"""What a final model was trained from, in hashes: its config, its data, the training code and the
cross-validation evidence it took its epochs and calibration from. `final` records the stamp in the card
and compares it on every call, so a pulled change of recipe, data or code is never served silently by an
old model (`make run` retrains; scripts/run-local.sh).

The code is hashed by its syntax tree without docstrings: a comment, a docstring or a reformatting does
not change the weights, so it does not ask for a retraining; any other change to model_training/ or
kdoct/ does.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import kdoct
import model_training
from model_training.config import ExperimentConfig, config_to_dict

__all__ = ["code_sha256", "data_sha256", "recipe_stamp", "stale_parts"]

_PACKAGES = (Path(model_training.__file__).parent, Path(kdoct.__file__).parent)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            first = body[0].value if body and isinstance(body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_sha256(packages: Iterable[Path] = _PACKAGES) -> str:
    """sha256 over the training code's syntax trees (docstrings and comments left out), file by file."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
            digest.update(f"{package.name}/{path.relative_to(package).as_posix()}\n".encode())
            digest.update(ast.dump(tree).encode())
    return digest.hexdigest()


def data_sha256(samples) -> str:
    """sha256 over the samples' labels, patients and image bytes (not their paths: a moved checkout is
    the same data)."""
    rows = []
    for sample in samples:
        content = hashlib.sha256(Path(sample.path).read_bytes()).hexdigest()
        rows.append(f"{sample.label},{sample.patient_id},{content}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def _file_sha256(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recipe_stamp(
    config: ExperimentConfig, samples, *, epochs_from: Path | None, oof: Path | None
) -> dict[str, str | None]:
    data = config_to_dict(config)
    data.pop("source_path", None)
    return {
        "config_sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
        "data_sha256": data_sha256(samples),
        "code_sha256": code_sha256(),
        "epochs_from_sha256": _file_sha256(epochs_from),
        "oof_sha256": _file_sha256(oof),
    }


_NAMES = {
    "config_sha256": "the config",
    "data_sha256": "the data",
    "code_sha256": "the training code",
    "epochs_from_sha256": "the cross-validation report (epochs)",
    "oof_sha256": "the out-of-fold evidence (calibration, gate)",
}


def stale_parts(recorded: dict | None, current: dict) -> list[str]:
    """What changed since the model was trained, in words (everything, for a model without a stamp)."""
    if not recorded:
        return ["no recipe stamp recorded (trained by an older version)"]
    return [_NAMES.get(key, key) for key, value in current.items() if recorded.get(key) != value]
