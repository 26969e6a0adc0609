"""`results`: copy a cv run's report, figures, predictions and epoch logs into the repository and
write its tables into a doc (see model_training/evaluation/publish.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "results",
        help="publish a cv run: copy its evidence to a results folder and its tables into a doc",
        description="Copies RUN/report.json, report.md, the figures, every fold's predictions.csv and the "
        "per-epoch logs into --to, and with --doc replaces the doc's <!-- results:NAME:begin/end --> "
        "section by the tables rendered from report.json (NAME: --name, default the --to folder's name).",
    )
    parser.add_argument("--run", required=True, type=Path, help="the cv run directory (holds report.json)")
    parser.add_argument("--to", required=True, type=Path, help="results folder to copy into")
    parser.add_argument(
        "--doc", type=Path, default=None, help="markdown file whose results section to rewrite"
    )
    parser.add_argument(
        "--name", default=None, help="section name in the doc (default: the --to folder name)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.evaluation.publish import publish_results  # deferred: see commands/__init__.py

    written = publish_results(args.run, args.to, args.doc, args.name)
    print(f"wrote {len(written)} files: {', '.join(str(p) for p in written[-3:])}, ...")
    return 0
