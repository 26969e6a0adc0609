"""`folds`: assign patient-level cross-validation folds once and save them as folds.csv."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence

from model_training.commands._args import class_set, positive_int
from model_training.data.folds import ROLES, make_folds, read_folds, write_folds
from model_training.data.manifest import Sample, read_manifest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "folds",
        help="split a manifest into patient-level folds",
        description="Stratified group k-fold by patient, plus a patient-level validation split inside "
        "each training part (64/16/20 for k=5). Writes the manifest columns plus fold_0..fold_<k-1> "
        "(train, val or test) and prints each fold's class proportions next to the whole.",
    )
    parser.add_argument("--manifest", required=True, help="manifest CSV")
    parser.add_argument("--k", type=positive_int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=43, help="random seed (default 43)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each training part for validation (0.2)"
    )
    parser.add_argument("--classes", type=class_set, help="check labels against neh3 or ucsd4")
    parser.add_argument("--out", required=True, help="folds CSV to write")
    parser.set_defaults(handler=run)


def _row(name: str, samples: Sequence[Sample], labels: Sequence[str]) -> str:
    """One table line: image and patient counts, then each class's share of the images in %."""
    counts = Counter(s.label for s in samples)
    shares = "".join(f"{100 * counts[label] / max(len(samples), 1):8.1f}" for label in labels)
    return f"{name:<12}{len(samples):>7}{len({s.patient_id for s in samples}):>9}  {shares}"


def run(args: argparse.Namespace) -> int:
    samples = read_manifest(args.manifest, classes=args.classes)
    roles = make_folds(samples, k=args.k, seed=args.seed, val_fraction=args.val_fraction)
    out = write_folds(samples, roles, args.out)
    table = read_folds(out)  # the same checks every later step will run
    labels = sorted({s.label for s in samples})
    print(f"wrote {out} (k={table.k}); class shares in % of images:")
    print(f"{'part':<12}{'images':>7}{'patients':>9}  " + "".join(f"{label:>8}" for label in labels))
    print(_row("whole", samples, labels))
    for fold in range(table.k):
        parts = table.split(fold)
        for role in ROLES:
            print(_row(f"fold {fold} {role}", parts[role], labels))
    return 0
