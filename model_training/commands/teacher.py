"""`teacher`: train, calibrate and export one fold's teacher."""

from __future__ import annotations

import argparse

from model_training.commands._training import add_config_arguments, fold_split, setup, teardown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "teacher",
        help="train one fold's teacher (focal loss, SWA, calibration, export)",
        description="Train the teacher of one fold on the run's folds.csv (made once when missing), then "
        "calibrate it on the validation split and export DIR/fold_K/teacher/. Works under torchrun.",
    )
    add_config_arguments(parser, fold=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.train.teacher import train_teacher  # deferred: see commands/__init__.py

    config, context = setup(args)
    try:
        split = fold_split(config, args, context)
        train_teacher(config, split, args.out, args.fold, context, resume=args.resume)
    finally:
        teardown(context)
    return 0
