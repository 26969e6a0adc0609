"""`oof`: the out-of-fold evidence of a cv run, which calibrates the models `final` trains on every patient
(model_training/runs/oof.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _keep(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.97, got {text!r}") from None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"the share kept must be in [0.5, 1), got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "oof",
        help="out-of-fold temperature and safety-gate threshold of a cv run, for `final --oof`",
        description="Runs every fold's teacher and student on its training images, its held-out test "
        "patients, the --ood-label images of patients it never saw and the non-OCT images of the gate "
        "report. Fits the temperature on the pooled out-of-fold logits and the gate's threshold as a "
        "quantile of out-of-fold OOD scores over the model's own training-image median, and measures both "
        "leave one fold out. Writes RUN/oof.json; `results` publishes it beside the run's report.",
    )
    parser.add_argument("--run", required=True, type=Path, help="the cv run directory")
    parser.add_argument(
        "--ood-manifest",
        type=Path,
        default=None,
        help="manifest.csv (path,label,patient_id) holding images of a class the models never learned",
    )
    parser.add_argument("--ood-label", default="DME", help="that class's label in the manifest (default DME)")
    parser.add_argument(
        "--keep",
        type=_keep,
        default=None,
        help="share of unseen in-distribution B-scans the gate's OOD score passes (default 0.98)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.evaluation.oof import DEFAULT_OOF_KEEP  # deferred: see commands/__init__.py
    from model_training.runs.oof import run_oof

    report = run_oof(
        args.run,
        ood_manifest=args.ood_manifest,
        ood_label=args.ood_label,
        keep=args.keep or DEFAULT_OOF_KEEP,
    )
    for role, summary in report["roles"].items():
        flagged = summary["ood"]["flagged"]
        rates = ", ".join(f"{name} {100 * v['rate']:.1f} %" for name, v in flagged.items())
        print(
            f"{role}: temperature {summary['temperature']:.3f}, ECE leave-one-fold-out "
            f"{100 * summary['ece_leave_one_fold_out']:.2f} %, "
            f"gate ratio {summary['ood']['threshold_ratio']:.3f}; "
            f"flagged (leave one fold out): {rates}"
        )
    print(f"wrote {args.run / 'oof.json'}")
    return 0
