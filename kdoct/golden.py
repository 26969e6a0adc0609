"""Golden outputs: small reference inputs shipped in a bundle with the probabilities the exported
model gave them, so any runtime can prove it reproduces the model before it serves it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from kdoct.errors import BundleError, GoldenMismatchError
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.probabilities import softmax

__all__ = ["GOLDEN_TOLERANCE", "check_golden", "golden_files", "read_golden"]

GOLDEN_TOLERANCE = 1e-4


def golden_files(images: Sequence[Image.Image], probabilities: np.ndarray) -> dict[str, bytes]:
    """The files of golden/ for save_bundle: PNG inputs and expected.json with their probabilities."""
    files: dict[str, bytes] = {}
    names = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = f"input_{index}.png"
        files[f"golden/{name}"] = buffer.getvalue()
        names.append(name)
    expected = {"inputs": names, "probabilities": np.asarray(probabilities, dtype=float).round(8).tolist()}
    files["golden/expected.json"] = (json.dumps(expected, indent=1) + "\n").encode()
    return files


def read_golden(golden_dir: Path) -> tuple[list[Image.Image], np.ndarray]:
    try:
        expected = json.loads((golden_dir / "expected.json").read_text())
        images = []
        for name in expected["inputs"]:
            with Image.open(golden_dir / name) as image:
                image.load()
                images.append(image)
        return images, np.asarray(expected["probabilities"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{golden_dir}: unreadable golden files: {exc}") from exc


def check_golden(
    golden_dir: Path,
    spec: PreprocessSpec,
    predict_logits: Callable[[np.ndarray], np.ndarray],
    tolerance: float = GOLDEN_TOLERANCE,
) -> float:
    """Run the golden inputs through `predict_logits` (batch -> logits); return the max abs difference
    of the probabilities, or raise GoldenMismatchError when it exceeds `tolerance`."""
    images, expected = read_golden(golden_dir)
    batch = preprocess_batch(images, spec)
    probabilities = softmax(predict_logits(batch))
    if probabilities.shape != expected.shape:
        raise GoldenMismatchError(
            f"{golden_dir}: runtime gave outputs of shape {probabilities.shape}, expected {expected.shape}"
        )
    difference = float(np.abs(probabilities - expected).max())
    if not difference <= tolerance:
        raise GoldenMismatchError(
            f"{golden_dir}: this runtime's probabilities differ from the bundle's golden outputs by "
            f"{difference:.2e} (> {tolerance:.0e}): the bundle is not reproduced; do not serve it"
        )
    return difference
