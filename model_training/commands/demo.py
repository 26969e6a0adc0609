"""`demo`: build the demo bundles once (`make run` calls it on every start; it returns at once when
OUT/student and OUT/teacher are complete bundles)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from model_training.commands._training import add_config_arguments, setup, teardown

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the demo bundles once (synthetic data) into OUT/student and OUT/teacher",
        description="Runs `cv` with the config into OUT/run (demo.yaml: one fold, synthetic data, under "
        "5 minutes on 2 CPU cores) and copies that fold's bundles to OUT/student and OUT/teacher. Does "
        "nothing when both are already complete bundles.",
    )
    add_config_arguments(parser, fold=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    from model_training.cv import is_complete_bundle

    if is_complete_bundle(out / "student") and is_complete_bundle(out / "teacher"):
        print(f"demo bundles ready: {out / 'student'}, {out / 'teacher'}")
        return 0
    from model_training.cv import run_cv

    config, context = setup(args)
    try:
        report = run_cv(config, out / "run", context)
    finally:
        teardown(context)
    if report is None:
        return 0
    fold = report["folds"][0]
    for role in ("teacher", "student"):
        target = out / role
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out / "run" / f"fold_{fold}" / role, target)
        accuracy = report[role]["folds"][0]["accuracy"]
        print(f"{role}: {target} (held-out accuracy on synthetic data {100 * accuracy:.1f} %)")
    return 0
