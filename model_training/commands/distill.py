"""`distill`: train one fold's student from that fold's frozen teacher bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_training.commands._training import add_config_arguments, fold_split, setup, teardown
from model_training.layout import bundle_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil one fold's teacher into the student",
        description="Online distillation on the same augmented batch; the teacher bundle must come from "
        "the same fold of the same folds.csv. --alpha 0 trains the no-distillation baseline "
        "(written to DIR/fold_K/student_no_kd/). Works under torchrun.",
    )
    add_config_arguments(parser, fold=True)
    parser.add_argument("--teacher", type=Path, help="teacher bundle (default DIR/fold_K/teacher)")
    parser.add_argument("--alpha", type=float, help="override student.alpha; 0 = no-distillation baseline")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.train.distill import train_student  # deferred: see commands/__init__.py

    config, context = setup(args)
    try:
        split = fold_split(config, args, context)
        teacher = args.teacher or bundle_dir(args.out, args.fold, "teacher")
        role = "student_no_kd" if args.alpha == 0 else "student"
        train_student(
            config, split, args.out, args.fold, context, teacher_dir=teacher, alpha=args.alpha, role=role,
            resume=args.resume,
        )  # fmt: skip
    finally:
        teardown(context)
    return 0
