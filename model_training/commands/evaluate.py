"""`evaluate`: metrics of any bundle on any manifest (the metric code cv uses)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a bundle on a manifest",
        description="Calibrated predictions of the bundle's own weights on every image of the manifest; "
        "writes OUT/predictions.csv and OUT/metrics.json and prints the headline figures.",
    )
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    parser.add_argument("--manifest", required=True, type=Path, help="manifest CSV (path,label,patient_id)")
    parser.add_argument("--out", type=Path, help="output directory (default: <bundle>-eval)")
    parser.add_argument("--tta", action="store_true", help="average the 5 test-time views")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.evaluation.evaluate import evaluate_bundle  # deferred: see commands/__init__.py

    out = args.out or args.bundle.with_name(args.bundle.name + "-eval")
    result = evaluate_bundle(args.bundle, args.manifest, out, tta=args.tta, batch_size=args.batch_size)
    metrics = result["metrics"]
    auc = "n/a" if metrics["auc"] is None else f"{metrics['auc']:.4f}"
    print(
        f"{result['bundle']['name']} on {metrics['n']} images: accuracy {metrics['accuracy']:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f}, AUC {auc}, ECE {metrics['ece']:.4f}"
    )
    print(f"written: {out / 'predictions.csv'}, {out / 'metrics.json'}")
    return 0
