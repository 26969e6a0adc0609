"""Bundles with random weights drawn from a seed, exported like real ones (ONNX checked against PyTorch
on golden images) or saved as PyTorch weights only: the tests' tiny timm test models and the
benchmarks' full-size architectures, whose speed does not depend on the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from kdoct.bundle import Bundle

CLASSES = ("normal", "drusen", "cnv")
STUDENT_TEMPERATURE = 1.5  # the tiny student's calibration: not 1, so that it shows in the probabilities

__all__ = ["CLASSES", "STUDENT_TEMPERATURE", "build_test_bundle", "build_tiny_bundles", "gray_images"]


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
    from kdoct.golden import golden_files
    from kdoct.models import create_model
    from kdoct.preprocess import PreprocessSpec, preprocess_batch
    from kdoct.probabilities import softmax
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


def _golden_images(sample_dir: Path) -> list[Image.Image]:
    return gray_images([sorted((sample_dir / c).glob("*.jpeg"))[0] for c in ("CNV", "NORMAL")])


def build_tiny_bundles(root: Path, sample_dir: Path) -> dict[str, Path]:
    """A student (timm `test_efficientnet`, 64 px, temperature STUDENT_TEMPERATURE) and a teacher
    (`test_convnext`, 72 px) under `root`, golden inputs from `sample_dir`; kept when already built."""
    import torch

    torch.set_num_threads(1)
    specs = {
        "student": ("test_efficientnet", (64, 64), STUDENT_TEMPERATURE),
        "teacher": ("test_convnext", (72, 72), 1.0),
    }
    paths = {}
    for role, (arch, size, temperature) in specs.items():
        out = root / role
        paths[role] = out
        if (out / "bundle.json").is_file():
            continue
        build_test_bundle(
            out,
            arch,
            size,
            role,
            _golden_images(sample_dir),
            seed=7 if role == "student" else 11,
            calibration={"temperature": temperature},
            metrics={"accuracy": {"mean": 0.5, "std": 0.0}},
        )
    return paths
