"""Patient-level cross-validation: per fold, the teacher, then the student distilled from it, both
evaluated on the fold's held-out test patients; then the report.

The folds are read once from DIR/folds.csv (see run_data.prepare_folds). A stage whose bundle is
already complete is not retrained, so an interrupted `cv` picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from kdoct.bundle import load_bundle
from kdoct.labels import class_names as class_set_names
from model_training.config import ExperimentConfig
from model_training.data.folds import check_test_isolation
from model_training.evaluation.classification_metrics import write_predictions
from model_training.evaluation.cv_report import build_report
from model_training.evaluation.predict import predict_bundle
from model_training.layout import bundle_dir, is_complete_bundle
from model_training.runs.run_data import prepare_folds
from model_training.train.distill import train_student
from model_training.train.distributed import DistContext
from model_training.train.teacher import train_teacher

__all__ = ["run_cv"]

log = logging.getLogger(__name__)


def _record_invocation(out_dir: Path, seconds: float, trained: list[str]) -> list[dict[str, Any]]:
    """Append this invocation (wall time, stages trained) to DIR/invocations.jsonl; return them all,
    so a report built by a later invocation still says what the whole run cost."""
    path = out_dir / "invocations.jsonl"
    record = {
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "trained": trained,
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cv(config: ExperimentConfig, out_dir: Path, context: DistContext) -> dict[str, Any] | None:
    """Train and evaluate every fold; returns the report on rank 0 (None elsewhere)."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    table = prepare_folds(config, out_dir, context)
    class_names = class_set_names(config.data.classes)
    folds = list(config.folds_to_run) if config.folds_to_run is not None else list(range(table.k))
    roles = ["teacher", "student"] + (["student_no_kd"] if config.run_no_kd else [])
    trained: list[str] = []  # what this invocation trained (a rerun may add only the baseline)
    for fold in folds:
        split = table.split(fold)
        check_test_isolation(split, fold)
        log.info(
            "fold %d: %d train / %d val / %d test images",
            fold, len(split["train"]), len(split["val"]), len(split["test"]),
        )  # fmt: skip
        teacher_dir = bundle_dir(out_dir, fold, "teacher")
        if not is_complete_bundle(teacher_dir):
            train_teacher(config, split, out_dir, fold, context, resume=True)
            trained.append(f"fold_{fold}/teacher")
        for role in roles[1:]:
            if not is_complete_bundle(bundle_dir(out_dir, fold, role)):
                trained.append(f"fold_{fold}/{role}")
                alpha = 0.0 if role == "student_no_kd" else None
                train_student(
                    config, split, out_dir, fold, context, teacher_dir=teacher_dir, alpha=alpha, role=role,
                    resume=True,
                )  # fmt: skip
        if context.is_main:
            device = context.device
            probabilities = {}
            for role in roles:
                bundle = load_bundle(bundle_dir(out_dir, fold, role))
                tta = config.teacher.tta if role == "teacher" else config.student.tta
                # Every model of the fold predicts the same list of test images, in the same order.
                probabilities[role] = predict_bundle(
                    bundle, split["test"], tta=tta, device=device, num_workers=config.data.num_workers
                )
            write_predictions(
                out_dir / f"fold_{fold}" / "predictions.csv", split["test"], class_names, probabilities
            )
        context.barrier()
    if not context.is_main:
        return None
    seconds = round(time.perf_counter() - started, 1)
    invocations = _record_invocation(out_dir, seconds, trained)
    extra = {
        "config": config.source_path,
        "folds": folds,
        "wall_time_s_this_invocation": seconds,  # resumed runs: not the total; see invocations
        "invocations": invocations,
        "world_size": context.world_size,
        "device": str(context.device),
        "torch_threads": torch.get_num_threads(),
    }
    report = build_report(out_dir, folds, class_names, extra)
    log.info("cv done in %.0f s: %s", extra["wall_time_s_this_invocation"], out_dir / "report.md")
    return report
