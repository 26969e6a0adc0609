"""`oof`: the out-of-fold evidence of a finished cross-validation run (model_training/evaluation/oof.py),
written to DIR/oof.json (and copied next to the run's published results with `--to`).

Per fold and role: the fold's bundle on its training images (its reference), its test patients, the
`--ood-label` images of patients it never saw (a disease outside its classes) and the non-OCT images of
the gate report (photographs, rendered text, noise, blank frames).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdoct.bundle import Bundle, load_bundle
from kdoct.errors import DataError
from kdoct.safety import load_gate
from model_training.data.folds import read_folds
from model_training.data.image_cache import decoded_images
from model_training.evaluation.gate_report import non_oct_images, read_manifest_rows
from model_training.evaluation.oof import (
    DEFAULT_OOF_KEEP,
    OOF_JSON,
    FoldScores,
    recipe_sha256,
    summarise_role,
)
from model_training.export.safety_fit import penultimate_features
from model_training.layout import bundle_dir

__all__ = ["run_oof"]

log = logging.getLogger(__name__)

ROLES = ("teacher", "student")


def _outside_rows(manifest: Path, label: str) -> list[dict[str, str]]:
    """The `label` rows of `manifest`, their paths resolved against its folder."""
    rows = [r for r in read_manifest_rows(manifest) if r["label"].lower() == label.lower()]
    if not rows:
        raise DataError(f"{manifest}: no images labelled {label}")
    return [{**r, "path": str(manifest.parent / r["path"])} for r in rows]


def _judge(gate, model, images: Sequence[Image.Image], spec, reference: float, batch: int):
    logits, features = penultimate_features(model, images, spec, batch)
    ratios = gate.ood.scores(features) / reference
    flagged = np.array([gate.quality_reason(image) is not None for image in images], dtype=bool)
    return logits, ratios, flagged


def fold_scores(
    bundle: Bundle,
    fold: int,
    train_images: Sequence[Image.Image],
    test_images: Sequence[Image.Image],
    test_labels: Sequence[int],
    others: dict[str, Sequence[Image.Image]],
    batch_size: int = 32,
) -> FoldScores:
    """The fold's bundle (its model and safety gate, as exported) on its training and test images and on
    each named set of images outside its classes."""
    gate = load_gate(bundle.path, bundle.manifest["files"])
    if gate is None:
        raise ValueError(f"{bundle.path}: no safety gate: export the fold again")
    model = bundle.model().eval()
    spec = bundle.preprocess
    _, train_features = penultimate_features(model, train_images, spec, batch_size)
    reference = float(np.median(gate.ood.scores(train_features)))
    logits, ratios, flagged = _judge(gate, model, test_images, spec, reference, batch_size)
    other = {
        name: _judge(gate, model, images, spec, reference, batch_size)[1:] for name, images in others.items()
    }
    return FoldScores(fold, logits, np.asarray(test_labels), reference, ratios, flagged, other)


def _recipe(teacher: dict[str, Any], student: dict[str, Any], fold: int) -> str:
    """The fold's recipe, from its student's config; its teacher must have been trained with the same
    settings but the student's (a student-only variant may reuse the teachers of another run)."""
    if {**teacher, "student": None} != {**student, "student": None}:
        raise DataError(f"fold {fold}: its teacher and student were trained with different settings")
    return recipe_sha256(student)


def run_oof(
    run_dir: Path,
    *,
    ood_manifest: Path | None = None,
    ood_label: str = "DME",
    keep: float = DEFAULT_OOF_KEEP,
) -> dict[str, Any]:
    """Score every fold's teacher and student; write and return DIR/oof.json."""
    run_dir = Path(run_dir)
    table = read_folds(run_dir / "folds.csv")
    non_oct = [image for group in non_oct_images().values() for image in group.values()]
    outside = _outside_rows(ood_manifest, ood_label) if ood_manifest is not None else []
    decoded_images.enable(True)
    per_role: dict[str, list] = {role: [] for role in ROLES}
    recipes = set()
    for fold in range(table.k):
        split = table.split(fold)
        train = [decoded_images.open(s.path) for s in split["train"]]
        test = [decoded_images.open(s.path) for s in split["test"]]
        seen = {s.patient_id for s in split["train"] + split["val"]}
        others = {"non_oct": non_oct}
        if ood_manifest is not None:  # a disease outside the classes, of patients this fold never saw
            unseen = [r["path"] for r in outside if r["patient_id"] not in seen]
            others[ood_label] = [decoded_images.open(path) for path in unseen]
        configs = {}
        for role in ROLES:
            bundle = load_bundle(bundle_dir(run_dir, fold, role))
            index = {name: i for i, name in enumerate(bundle.class_names)}
            configs[role] = bundle.manifest["provenance"]["config"]
            log.info("oof: fold %d %s", fold, role)
            per_role[role].append(
                fold_scores(bundle, fold, train, test, [index[s.label] for s in split["test"]], others)
            )
        recipes.add(_recipe(configs["teacher"], configs["student"], fold))
    if len(recipes) != 1:
        raise DataError(f"{run_dir}: the folds were trained with {len(recipes)} different recipes")
    report = {
        "run": str(run_dir),
        "recipe_sha256": recipes.pop(),
        "folds": table.k,
        "outside_label": ood_label if ood_manifest is not None else None,
        "roles": {role: summarise_role(folds, keep) for role, folds in per_role.items()},
    }
    (run_dir / OOF_JSON).write_text(json.dumps(report, indent=1) + "\n")
    return report
