"""`bench`: efficiency table (params, size, GFLOPs, latency) of bundles, and training throughput."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdoct.errors import ConfigError
from model_training.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="params, size, GFLOPs and latency of bundles; training throughput of a config",
        description="--bundles: median latency at batch 1 and 8 on this CPU (and CUDA when present), "
        "written to OUT.md and OUT.json. --training-config: teacher and student training images/s with "
        "and without AMP/channels_last on synthetic data, written to OUT-training.md/.json.",
    )
    parser.add_argument("--bundles", nargs="+", type=Path, help="bundle directories")
    parser.add_argument("--training-config", help="measure training throughput at this config's settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--out", type=Path, default=Path("bench-models"), help="output prefix (default bench-models)"
    )
    parser.add_argument(
        "--runs", type=int, default=30, help="timed runs per latency measurement (default 30)"
    )
    parser.add_argument("--batches", type=int, default=20, help="timed batches per throughput measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.bundles and not args.training_config:
        raise ConfigError("bench needs --bundles B1 B2 ... and/or --training-config CONFIG")
    if args.bundles:
        from model_training.evaluation.bundle_efficiency import (  # deferred: see commands/__init__.py
            bench_bundles,
            write_bench,
        )

        report = bench_bundles(args.bundles, batch_sizes=tuple(args.batch_sizes), runs=args.runs)
        md_path, json_path = write_bench(report, args.out)
        print(md_path.read_text())
        print(f"written: {md_path}, {json_path}")
    if args.training_config:
        # deferred: see commands/__init__.py
        from model_training.train.training_throughput import throughput_markdown, training_throughput

        report = training_throughput(load_config(args.training_config, args.overrides), batches=args.batches)
        prefix = args.out.with_name(args.out.name + "-training")
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        markdown = throughput_markdown(report)
        prefix.with_suffix(".md").write_text(markdown)
        print(markdown)
    return 0
