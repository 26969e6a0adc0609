"""Bundles with random weights drawn from a seed, exported like real ones (ONNX checked against PyTorch
on golden images) or saved as PyTorch weights only: the tests' tiny timm test models and the
benchmarks' full-size architectures, whose speed does not depend on the weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from kdoct.bundle import Bundle

CLASSES = ("normal", "drusen", "cnv")
STUDENT_TEMPERATURE = 1.5  # the tiny student's calibration: not 1, so that it shows in the probabilities

__all__ = [
    "CLASSES",
    "STUDENT_TEMPERATURE",
    "GateImages",
    "build_candidate_bundle",
    "build_test_bundle",
    "build_tiny_bundles",
    "gate_images",
    "gray_images",
]

_CLASS_DIRS = {"normal": "NORMAL", "drusen": "DRUSEN", "cnv": "CNV"}


@dataclass(frozen=True)
class GateImages:
    """Real B-scans a test bundle's safety gate is fitted on (kdoct/safety.py), as training does."""

    train: list[Image.Image]
    labels: list[int]  # class index (CLASSES order) of each training image
    val: list[Image.Image]


def gate_images(sample_dir: Path, train_per_class: int = 24, val_per_class: int = 12) -> GateImages:
    """The first B-scans of each class of the sample for fitting, the next ones for the threshold."""
    train, labels, val = [], [], []
    for index, name in enumerate(CLASSES):
        paths = sorted((sample_dir / _CLASS_DIRS[name]).glob("*.jpeg"))[: train_per_class + val_per_class]
        images = []
        for path in paths:
            with Image.open(path) as image:
                image.load()
                images.append(image)
        train += images[:train_per_class]
        labels += [index] * len(images[:train_per_class])
        val += images[train_per_class:]
    return GateImages(train, labels, val)


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
    gate: GateImages | None = None,
) -> Bundle:
    """A bundle of `arch` with random weights drawn from `seed` (3 classes, neh3 order).

    onnx=True exports it like a real model (ONNX checked against PyTorch on `golden_images`, which
    must not be empty); onnx=False only saves the weights, with PyTorch's golden outputs when
    `golden_images` are given: for a PyTorch-only measurement, where exporting a large model to ONNX
    would only cost time. `gate`: fit the bundle's safety gate on these images (the service needs one
    unless KDOCT_SAFETY_GATE=off)."""
    import torch

    from kdoct.bundle import save_bundle
    from kdoct.golden import golden_files
    from kdoct.models import create_model
    from kdoct.preprocess import PreprocessSpec, preprocess_batch
    from kdoct.probabilities import softmax
    from model_training.export.bundle_export import export_bundle

    torch.manual_seed(seed)
    model = create_model(arch, len(CLASSES)).eval()
    preprocess = PreprocessSpec(input_size=input_size)
    identity = {"name": name or f"test-{role}", "version": version, "role": role, "arch": arch}
    safety = None
    if gate is not None:
        from model_training.export.safety_fit import fit_safety_gate

        safety = fit_safety_gate(
            model, train_images=gate.train, train_labels=gate.labels, val_images=gate.val,
            num_classes=len(CLASSES), spec=preprocess,
        )  # fmt: skip
    if onnx:
        return export_bundle(
            model, out_dir, **identity, class_names=CLASSES, preprocess=preprocess,
            golden_images=golden_images, calibration=calibration, metrics=metrics, safety=safety,
        )  # fmt: skip
    manifest = {
        **identity,
        "class_names": list(CLASSES),
        "preprocess": preprocess.to_dict(),
        "calibration": dict(calibration or {"temperature": 1.0}),
        "metrics": dict(metrics or {}),
    }
    extra_files: dict[str, bytes] = {}
    if golden_images:
        from kdoct.golden import gate_probes
        from kdoct.models import LogitsAndFeatures

        images = list(golden_images) + (gate_probes() if safety is not None else [])
        with torch.inference_mode():
            logits, features = LogitsAndFeatures(model)(
                torch.from_numpy(preprocess_batch(images, preprocess))
            )
        verdicts = None
        if safety is not None:
            verdicts = safety.verdicts([safety.quality_reason(image) for image in images], features.numpy())
            extra_files.update(safety.files())
        extra_files.update(golden_files(images, softmax(logits.numpy()), verdicts))
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
    fitting = gate_images(sample_dir)
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
            gate=fitting if role == "student" else None,
        )
    return paths


def build_candidate_bundle(root: Path, sample_dir: Path, *, input_size: tuple[int, int] = (64, 64)) -> Path:
    """A candidate student for the model lifecycle's tests: the tiny student's architecture with other
    random weights (seed 13), version 0.0.2, its own safety gate; `input_size` other than the student's
    64 px makes a candidate of other preprocessing. Kept when already built."""
    import torch

    torch.set_num_threads(1)
    out = root / f"candidate-{input_size[0]}x{input_size[1]}"
    if not (out / "bundle.json").is_file():
        build_test_bundle(
            out, "test_efficientnet", input_size, "student", _golden_images(sample_dir), seed=13,
            name="test-student", version="0.0.2", calibration={"temperature": STUDENT_TEMPERATURE},
            metrics={"accuracy": {"mean": 0.5, "std": 0.0}}, gate=gate_images(sample_dir),
        )  # fmt: skip
    return out
