"""`index`: build a manifest (path, label, patient_id, volume_id) from a dataset on disk."""

from __future__ import annotations

import argparse
from collections import Counter

from kdoct.errors import ConfigError
from model_training.commands._args import class_set, show_progress
from model_training.data.manifest import write_manifest
from model_training.data.readers import index_kermany, index_manifest, index_neh

LAYOUTS = ("kermany", "manifest", "neh")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build a manifest from a dataset",
        description="Index a dataset into a manifest CSV. Every unreadable or unlabeled file is reported "
        "by name and nothing is written until there are none.",
    )
    parser.add_argument(
        "--root", required=True, help="dataset folder (for --layout manifest: a manifest file or its folder)"
    )
    parser.add_argument(
        "--layout",
        required=True,
        choices=LAYOUTS,
        help="neh: data_information.csv + class folders; kermany: CLASS/CLASS-PATIENT-N.jpeg; "
        "manifest: an existing manifest CSV",
    )
    parser.add_argument("--classes", type=class_set, default="neh3", help="neh3 or ucsd4 (default neh3)")
    parser.add_argument(
        "--neh-label-equals-class",
        action="store_true",
        help="NEH only: keep only the B-scans whose Label equals their patient's Class, as the reference "
        "code (and so the paper's NEH figures) did; prints what it drops",
    )
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.neh_label_equals_class and args.layout != "neh":
        raise ConfigError("--neh-label-equals-class needs --layout neh: only NEH has a per-patient Class")
    if args.layout == "neh":
        samples = index_neh(
            args.root, args.classes, progress=show_progress(), label_equals_class=args.neh_label_equals_class
        )
    else:
        readers = {"kermany": index_kermany, "manifest": index_manifest}
        samples = readers[args.layout](args.root, args.classes, progress=show_progress())
    out = write_manifest(samples, args.out)
    counts = Counter(s.label for s in samples)
    patients = len({s.patient_id for s in samples})
    per_class = ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    print(f"indexed {len(samples)} images of {patients} patients ({per_class}) into {out}")
    return 0
