"""`export`: a final training checkpoint -> a verified bundle (weights, ONNX, golden outputs), with
--int8 its INT8 model too; or --from-bundle --int8: an INT8 model added to an exported bundle."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a final checkpoint (fold_K/work/<role>/final.pt) as a bundle",
        description="Rebuild the model from the checkpoint, export ONNX with a dynamic batch axis, check "
        "it against PyTorch on the checkpoint's golden validation images (<= 1e-4 on probabilities) "
        "and write bundle.json, model.safetensors, model.onnx and golden/. --int8 adds model.int8.onnx "
        "(ONNX Runtime static quantization calibrated on the split's training images), refused unless "
        "it agrees with fp32 on >= 99%% of the validation labels and loses <= 0.5 point of accuracy.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="final.pt written by teacher/distill/cv/final")
    source.add_argument(
        "--from-bundle", type=Path, help="an exported bundle to add the INT8 model to (with --int8)"
    )
    parser.add_argument("--out", type=Path, help="bundle directory to create (new; with --checkpoint)")
    parser.add_argument("--int8", action="store_true", help="also write the INT8 model (model.int8.onnx)")
    parser.add_argument(
        "--split",
        type=Path,
        help="the run's split.csv (final) or folds.csv (cv) when the bundle is not in its run directory",
    )
    parser.add_argument(
        "--calibration-images", type=int, default=512, help="training images calibrating INT8 (default 512)"
    )
    parser.add_argument(
        "--min-gate-agreement",
        type=float,
        default=0.99,
        help="share of validation images whose safety-gate OOD verdict INT8 must leave unchanged (0.99)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.from_bundle is not None:
        if not args.int8 or args.out is not None:
            raise ConfigError("--from-bundle adds an INT8 model to that bundle: pass --int8, not --out")
        bundle = _add_int8(args.from_bundle, args)
    else:
        if args.out is None:
            raise ConfigError("--checkpoint needs --out, the bundle directory to create")
        bundle = _export(args)
    check = bundle.manifest.get("onnx_check", {})
    print(f"{bundle.path}: {bundle.name} sha256 {bundle.sha256[:12]}, ONNX vs PyTorch {check}")
    if "int8" in bundle.manifest:
        print(f"INT8 against fp32 on the validation images: {bundle.manifest['int8']}")
    return 0


def _export(args: argparse.Namespace):
    from model_training.train.checkpoint import export_checkpoint  # deferred: see commands/__init__.py

    if not args.int8:
        return export_checkpoint(args.checkpoint, args.out)
    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out} is not empty: export into a new directory")
    # The fp32 bundle is built beside --out and moved there only once its INT8 model passed, so a
    # refused INT8 model leaves nothing behind.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        export_checkpoint(args.checkpoint, staging)
        # The split lies relative to the checkpoint's run: DIR[/fold_K]/work/<role>/final.pt.
        _add_int8(staging, args, args.checkpoint.resolve().parents[2])
        if args.out.exists():
            args.out.rmdir()
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return load_bundle(args.out)


def _add_int8(bundle_dir: Path, args: argparse.Namespace, stage_root: Path | None = None):
    """`stage_root`: the run directory (DIR or DIR/fold_K) the split is found in without --split; by
    default the bundle's parent (DIR/<role>)."""
    # deferred: see commands/__init__.py
    from model_training.export.int8 import Int8Gate, add_int8
    from model_training.export.int8_data import default_split_path, int8_images

    bundle = load_bundle(bundle_dir)
    provenance = bundle.manifest.get("provenance", {})
    root = stage_root or bundle.path.resolve().parent
    split = args.split or default_split_path(root, provenance.get("fold"))
    images = int8_images(provenance, bundle.class_names, split, args.calibration_images)
    return add_int8(
        bundle.path,
        calibration_images=images.calibration,
        calibration_labels=images.calibration_labels,
        val_images=images.val,
        val_labels=images.val_labels,
        source=images.source,
        limits=Int8Gate(min_gate_agreement=args.min_gate_agreement),
    )
