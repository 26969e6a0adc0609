"""`synth`: write a synthetic OCT dataset (PNG B-scans + manifest.csv) for tests and the demo."""

from __future__ import annotations

import argparse
from collections import Counter

from kdoct.errors import DataError
from model_training.commands._args import class_set, positive_int, show_progress
from model_training.data.manifest import read_manifest
from model_training.data.synthetic import generate_dataset


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x496, got {text!r}") from None
    return width, height


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic OCT dataset",
        description="Write seeded, reproducible synthetic B-scans to OUT/<CLASS>/*.png plus "
        "OUT/manifest.csv. The same seed gives byte-identical files.",
    )
    parser.add_argument("--out", required=True, help="an empty or new folder")
    parser.add_argument("--patients", type=positive_int, default=12, help="number of patients (default 12)")
    parser.add_argument(
        "--bscans-per-patient", type=positive_int, default=4, help="B-scans per patient (default 4)"
    )
    parser.add_argument("--classes", type=class_set, default="neh3", help="neh3 or ucsd4 (default neh3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=_size, default=(512, 496), help="WIDTHxHEIGHT (default 512x496)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if min(args.size) < 32:
        raise DataError(f"--size must be at least 32x32, got {args.size[0]}x{args.size[1]}")
    manifest = generate_dataset(
        args.out,
        patients=args.patients,
        bscans_per_patient=args.bscans_per_patient,
        classes=args.classes,
        seed=args.seed,
        size=args.size,
        progress=show_progress(),
    )
    counts = Counter(s.label for s in read_manifest(manifest))
    per_class = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    print(f"wrote {sum(counts.values())} images ({per_class}) and {manifest}")
    return 0
