"""`cv`: patient-level cross-validation of teacher and student, with the report."""

from __future__ import annotations

import argparse

from model_training.commands._training import add_config_arguments, setup, teardown


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cv",
        help="cross-validate teacher + distilled student; writes bundles, predictions and the report",
        description="Per fold: teacher, then student, both evaluated on the fold's held-out patients. "
        "Writes DIR/folds.csv, DIR/fold_K/{teacher,student}/ bundles, DIR/fold_K/predictions.csv, "
        "DIR/report.json, DIR/report.md and figures. Re-running continues an interrupted run. "
        "Works under torchrun.",
    )
    add_config_arguments(parser, fold=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.runs.cv import run_cv  # deferred: see commands/__init__.py

    config, context = setup(args)
    try:
        report = run_cv(config, args.out, context)
    finally:
        teardown(context)
    if report is not None:
        for model in ("teacher", "student", "student_no_kd"):
            if model in report:
                mean, std = report[model]["mean"], report[model]["std"]
                spread = f" ± {100 * std['accuracy']:.2f}" if std["accuracy"] is not None else ""
                print(f"{model}: accuracy {100 * mean['accuracy']:.2f}{spread} %")
        print(f"report: {args.out / 'report.md'}")
    return 0
