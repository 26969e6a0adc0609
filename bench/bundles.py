"""The bundles the benchmarks serve: the paper's architectures at 384 px with random weights (speed
does not depend on the weights), exported like real ones and cached under var/bench/; and
`build_test_bundle`, which the tests also use for their tiny timm test models."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from kdoct.bundle import Bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "var" / "bench"
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "oct2017-sample"
CLASSES = ("normal", "drusen", "cnv")
INPUT_SIZE = (384, 384)
ARCHS = {"student": "efficientnet_b2", "teacher": "convnextv2_large"}

log = logging.getLogger(__name__)

__all__ = ["CACHE", "SAMPLE_DIR", "bench_bundle", "build_test_bundle", "gray_images", "sample_jpegs"]


def sample_jpegs(limit: int | None = None) -> list[Path]:
    """Real OCT2017 B-scans, classes interleaved so that any prefix mixes them."""
    by_class = [sorted((SAMPLE_DIR / name).glob("*.jpeg")) for name in ("CNV", "DME", "DRUSEN", "NORMAL")]
    mixed = [path for group in zip(*by_class, strict=False) for path in group]
    if not mixed:
        raise FileNotFoundError(f"no OCT sample JPEGs under {SAMPLE_DIR}")
    return mixed[:limit] if limit else mixed


def gray_images(paths: Sequence[Path]) -> list[Image.Image]:
    """B-scans loaded as grayscale PIL images (golden inputs for a bundle)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("L"))
    return images


def build_test_bundle(
    out_dir: Path,
    arch: str,
    input_size: tuple[int, int],
    role: str,
    golden_images: Sequence[Image.Image],
    seed: int,
    name: str | None = None,
    *,
    version: str = "0.0.1",
    calibration: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    onnx: bool = True,
) -> Bundle:
    """A bundle of `arch` with random weights drawn from `seed` (3 classes, neh3 order).

    onnx=True exports it like a real model (ONNX checked against PyTorch on `golden_images`, which
    must not be empty); onnx=False only saves the weights, with PyTorch's golden outputs when
    `golden_images` are given: for a PyTorch-only measurement, where exporting a large model to ONNX
    would only cost time."""
    import torch

    from kdoct.bundle import save_bundle
    from kdoct.golden import golden_files, softmax
    from kdoct.models import create_model
    from kdoct.preprocess import PreprocessSpec, preprocess_batch
    from model_training.export import export_bundle

    torch.manual_seed(seed)
    model = create_model(arch, len(CLASSES))
    preprocess = PreprocessSpec(input_size=input_size)
    identity = {"name": name or f"test-{role}", "version": version, "role": role, "arch": arch}
    if onnx:
        return export_bundle(
            model, out_dir, **identity, class_names=CLASSES, preprocess=preprocess,
            golden_images=golden_images, calibration=calibration, metrics=metrics,
        )  # fmt: skip
    manifest = {
        **identity,
        "class_names": list(CLASSES),
        "preprocess": preprocess.to_dict(),
        "calibration": dict(calibration or {"temperature": 1.0}),
        "metrics": dict(metrics or {}),
    }
    extra_files = None
    if golden_images:
        model.eval()
        with torch.inference_mode():
            logits = model(torch.from_numpy(preprocess_batch(list(golden_images), preprocess))).numpy()
        extra_files = golden_files(golden_images, softmax(logits))
    return save_bundle(out_dir, model, manifest, extra_files=extra_files)


def bench_bundle(role: str) -> Path:
    """The cached bundle of `role` (student | teacher), exported on first use."""
    out = CACHE / f"{role}-{ARCHS[role]}-{INPUT_SIZE[0]}"
    if (out / "bundle.json").is_file():
        return out
    log.info("exporting a random-weight %s bundle (%s, %d px) to %s", role, ARCHS[role], INPUT_SIZE[0], out)
    scratch = out.with_name(out.name + ".partial")
    if scratch.exists():
        import shutil

        shutil.rmtree(scratch)
    build_test_bundle(
        scratch,
        ARCHS[role],
        INPUT_SIZE,
        role,
        gray_images(sample_jpegs(2)),
        seed=0,
        name=f"bench-{role}",
        version="0.0.0-random",
        metrics={"note": "random weights: for speed measurements only"},
    )
    scratch.rename(out)
    return out
