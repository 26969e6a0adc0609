"""`gate-report`: how well a final model's safety gate separates what it may grade from what it may not
(model_training/evaluation/gate_report.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate-report",
        help="measure a final run's safety gate on held-out, unseen-disease and non-OCT images",
        description="Runs the student bundle of a `final` run (with a test slice) as the service does "
        "(ONNX Runtime, the bundle's gate) on its test patients, on the --ood-label images of a manifest "
        "whose patients it never saw, and on natural photographs, rendered text, noise and blank frames. "
        "Writes DIR/gate_report.json and DIR/gate_report.md and prints the markdown.",
    )
    parser.add_argument("--run", required=True, type=Path, help="the `final` run directory (--out of final)")
    parser.add_argument(
        "--ood-manifest",
        required=True,
        type=Path,
        help="manifest.csv (path,label,patient_id) holding images of a class the model never learned",
    )
    parser.add_argument("--ood-label", default="DME", help="that class's label in the manifest (default DME)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: the bundle's INT8 model with its own gate statistics (export --int8); writes "
        "gate_report.int8.json/.md",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.evaluation.gate_report import (  # deferred: see commands/__init__.py
        gate_report,
        report_markdown,
    )

    report = gate_report(args.run, args.ood_manifest, args.ood_label, args.precision)
    command = "python -m model_training " + shlex.join(sys.argv[1:])
    markdown = report_markdown(report, command)
    stem = "gate_report" if args.precision == "fp32" else f"gate_report.{args.precision}"
    (args.run / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.run / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0
