"""The bundles the benchmarks serve: the paper's architectures at 384 px with random weights (speed
does not depend on the weights), exported like real ones and cached under var/bench/; and the real
OCT2017 B-scans the benchmarks send."""

from __future__ import annotations

import logging
from pathlib import Path

from kdoct_testing.bundles import build_test_bundle, gate_images, gray_images

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "var" / "bench"
SAMPLE_DIR = REPO_ROOT / "data" / "oct2017-sample"
INPUT_SIZE = (384, 384)
ARCHS = {"student": "efficientnet_b2", "teacher": "convnextv2_large"}

log = logging.getLogger(__name__)

__all__ = ["CACHE", "REPO_ROOT", "SAMPLE_DIR", "bench_bundle", "sample_jpegs"]


def sample_jpegs(limit: int | None = None) -> list[Path]:
    """Real OCT2017 B-scans, classes interleaved so that any prefix mixes them."""
    by_class = [sorted((SAMPLE_DIR / name).glob("*.jpeg")) for name in ("CNV", "DME", "DRUSEN", "NORMAL")]
    mixed = [path for group in zip(*by_class, strict=False) for path in group]
    if not mixed:
        raise FileNotFoundError(f"no OCT sample JPEGs under {SAMPLE_DIR}")
    return mixed[:limit] if limit else mixed


def bench_bundle(role: str) -> Path:
    """The cached bundle of `role` (student | teacher), exported on first use."""
    # "-gated": bundles cached before the safety gate have no gate, and the service refuses those.
    out = CACHE / f"{role}-{ARCHS[role]}-{INPUT_SIZE[0]}-gated"
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
        gate=gate_images(SAMPLE_DIR) if role == "student" else None,
    )
    scratch.rename(out)
    return out


def default_model() -> Path:
    """var/default-model, the trained default model `make run` serves (its student and split.csv),
    trained here first if it is missing (minutes on 2 cores) by scripts/train-default-model.sh, as
    `make run` trains it."""
    import os
    import subprocess
    import sys

    out = REPO_ROOT / "var" / "default-model"
    if not (out / "student" / "bundle.json").is_file():
        log.info("training the default model into %s (as `make run` does)", out)
        subprocess.run(
            ["scripts/train-default-model.sh", str(out)],
            check=True, cwd=REPO_ROOT, env={**os.environ, "PY": sys.executable},
        )  # fmt: skip
    return out


def bench_int8_bundle() -> Path:
    """The student bench bundle plus its INT8 model (`export --int8`'s quantisation, calibrated on
    sample B-scans). Random weights make the INT8/fp32 agreement meaningless, so its limits are off
    here: for speed only (accuracy agreement: docs/BENCHMARKS.md, "INT8 student", on trained weights)."""
    import shutil

    from model_training.export.int8 import Int8Gate, add_int8

    out = CACHE / f"student-{ARCHS['student']}-{INPUT_SIZE[0]}-gated-int8"
    if (out / "bundle.json").is_file():
        return out
    scratch = out.with_name(out.name + ".partial")
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(bench_bundle("student"), scratch)
    images = gate_images(SAMPLE_DIR)
    add_int8(
        scratch,
        calibration_images=images.train,
        val_images=images.val,
        val_labels=[0] * len(images.val),
        limits=Int8Gate(
            min_agreement=0.0, max_accuracy_drop=1.0, min_gate_agreement=0.0, max_probability_diff_p95=1.0
        ),
        source={"note": "random weights, sample B-scans: for speed measurements only"},
    )
    scratch.rename(out)
    return out


def bench_candidate_bundle() -> Path:
    """A second random-weight student of the bench architecture (seed 1): a candidate to shadow."""
    out = CACHE / f"candidate-{ARCHS['student']}-{INPUT_SIZE[0]}-gated"
    if (out / "bundle.json").is_file():
        return out
    log.info("exporting a random-weight candidate bundle to %s", out)
    scratch = out.with_name(out.name + ".partial")
    if scratch.exists():
        import shutil

        shutil.rmtree(scratch)
    build_test_bundle(
        scratch, ARCHS["student"], INPUT_SIZE, "student", gray_images(sample_jpegs(2)), seed=1,
        name="bench-student", version="0.0.1-random-candidate",
        metrics={"note": "random weights: for speed measurements only"}, gate=gate_images(SAMPLE_DIR),
    )  # fmt: skip
    scratch.rename(out)
    return out
