"""Bundles of timm's tiny test models with random (seeded) weights, exported like real ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from kdoct.bundle import Bundle
from kdoct_testing.bundles import build_test_bundle, gate_images

# The student family and the teacher family, as the service serves them.
TEST_ROLES = {"test_efficientnet": "student", "test_convnext": "teacher"}
# 128 px gives a 4 x 4 feature map (stride 32): small enough to be fast, big enough to have a shape.
TEST_INPUT_SIZE = (128, 128)


@pytest.fixture(scope="session")
def real_bscan(sample_jpegs: dict[str, list[Path]]) -> Image.Image:
    with Image.open(sample_jpegs["CNV"][0]) as image:
        image.load()
        return image


@pytest.fixture(scope="session")
def explain_bundles(tmp_path_factory, real_bscan: Image.Image, sample_dir: Path) -> dict[str, Bundle]:
    torch.set_num_threads(1)
    bundles = {}
    for seed, (arch, role) in enumerate(TEST_ROLES.items()):
        out = tmp_path_factory.mktemp("bundles") / arch
        # The service serves a student only with its safety gate.
        gate = gate_images(sample_dir) if role == "student" else None
        bundles[arch] = build_test_bundle(
            out, arch, TEST_INPUT_SIZE, role, [real_bscan], seed, name=f"explain-{arch}", gate=gate
        )
    return bundles
