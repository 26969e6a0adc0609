"""`export`: a final training checkpoint -> a verified bundle (weights, ONNX, golden outputs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a final checkpoint (fold_K/work/<role>/final.pt) as a bundle",
        description="Rebuild the model from the checkpoint, export ONNX with a dynamic batch axis, check "
        "it against PyTorch on the checkpoint's golden validation images (<= 1e-4 on probabilities) "
        "and write bundle.json, model.safetensors, model.onnx and golden/.",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="final.pt written by teacher/distill/cv"
    )
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create (must be new)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from model_training.checkpoint import export_checkpoint

    bundle = export_checkpoint(args.checkpoint, args.out)
    check = bundle.manifest.get("onnx_check", {})
    print(f"{bundle.path}: {bundle.name} sha256 {bundle.sha256[:12]}, ONNX vs PyTorch {check}")
    return 0
