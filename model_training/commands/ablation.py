"""`ablation`: cross-validate a config's variants and tabulate them (evaluation/ablation.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablation",
        help="cross-validate the variants of an ablation plan and write their table into a doc",
        description="For each row of PLAN (a config and its --set overrides): with --train, runs `cv` into "
        "RUNS/<slug> unless it is complete; publishes every complete run into the plan's results folder "
        "(after checking it was trained with exactly the row's settings); with --doc, writes the table, "
        "computed from the published files only, between <!-- results:ablation:begin/end -->.",
    )
    parser.add_argument("--plan", required=True, type=Path, help="ablation plan YAML")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="run directories")
    parser.add_argument("--train", action="store_true", help="run the rows that have no complete run")
    parser.add_argument("--only", action="append", default=[], metavar="SLUG", help="only these rows")
    parser.add_argument("--doc", type=Path, default=None, help="markdown file to write the table into")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # deferred: see commands/__init__.py
    from model_training.evaluation.ablation import ablation_table, publish_row, read_plan
    from model_training.evaluation.publish import replace_section

    plan = read_plan(args.plan)
    for row in plan.rows:
        if args.only and row.slug not in args.only:
            continue
        run_dir = args.runs / row.slug
        if args.train and not (run_dir / "report.json").is_file():
            _train(plan.config, row.overrides, run_dir)
        if (run_dir / "report.json").is_file():
            publish_row(plan, row, run_dir)
            print(f"{row.slug}: published {plan.results / row.slug}")
    table = ablation_table(plan, args.runs)
    print(table)
    if args.doc is not None:
        args.doc.write_text(replace_section(args.doc.read_text(), "ablation", table))
    return 0


def _train(config_path: Path, overrides, run_dir: Path) -> None:
    from model_training.commands.cv import run as run_cv  # deferred: see commands/__init__.py

    log.info("ablation: cv %s %s", run_dir, " ".join(overrides))
    args = argparse.Namespace(config=str(config_path), out=run_dir, overrides=list(overrides), verbose=False)
    code = run_cv(args)
    if code:
        sys.exit(code)
