"""What the safety gate costs per image on the CPU: the quality check (on the decoded frame, in the
decode pool) and the out-of-distribution score (on the model's features, after inference).

    python -m bench.gate_cost [--bundle var/default-model/student] [--repeats 500] [--write-docs]

Real B-scans of the OCT2017 sample, decoded as the service decodes them. The OOD score is timed with
the bundle's own detector when one is given, and with detectors of the feature sizes of the default
student (EfficientNet-Lite0, 1,280) and the paper's (EfficientNet-B2, 1,408) otherwise (the cost
depends on the size, not on the values). Medians of `repeats` rounds, per image.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.bundles import sample_jpegs
from bench.report import machine, markdown_table, median_ms, now, write_block
from kdoct.bundle import load_bundle
from kdoct.safety import OodDetector, QualityBounds, load_gate, quality_features

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- gate_cost:begin -->", "<!-- gate_cost:end -->"


def _detectors(bundle: Path | None) -> dict[str, OodDetector]:
    if bundle is not None:
        loaded = load_bundle(bundle)
        gate = load_gate(loaded.path, loaded.manifest["files"])
        if gate is None:
            raise SystemExit(f"{bundle} has no safety gate")
        return {f"{loaded.name} ({gate.ood.dims} features)": gate.ood}
    rng = np.random.default_rng(0)
    detectors = {}
    for name, dims in (("EfficientNet-Lite0", 1280), ("EfficientNet-B2", 1408)):
        projection = rng.standard_normal((dims, dims)).astype(np.float32)
        detectors[f"{name} size ({dims} features)"] = OodDetector(
            projection, rng.standard_normal((3, dims)).astype(np.float32), 1.0
        )
    return detectors


def measure(bundle: Path | None, repeats: int) -> list[list[str]]:
    frames = []
    for path in sample_jpegs(40):
        with Image.open(path) as image:
            image.load()
            frames.append(image)
    bounds = QualityBounds(low=np.zeros(8), high=np.ones(8) * 10)
    rows = []
    for size in sorted({frame.size for frame in frames}):
        frame = next(f for f in frames if f.size == size)
        ms = median_ms(lambda f=frame: bounds.reason(quality_features(f)), repeats)
        rows.append([f"quality check, {size[0]}x{size[1]} JPEG B-scan", "1", f"{ms:.3f}"])
    rng = np.random.default_rng(1)
    for name, detector in _detectors(bundle).items():
        for batch in (1, 32):
            features = rng.standard_normal((batch, detector.dims)).astype(np.float32)
            ms = median_ms(lambda d=detector, f=features: d.scores(f), repeats) / batch
            rows.append([f"OOD score, {name}", str(batch), f"{ms:.3f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate_cost", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=None, help="a student bundle with a safety gate")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--write-docs", action="store_true", help=f"put the table in {DOCS.name}")
    args = parser.parse_args(argv)
    rows = measure(args.bundle, args.repeats)
    command = "python -m bench.gate_cost " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = markdown_table(["step", "batch", "ms per image (p50)"], rows)
    text = (
        f"Measured {now()} on {machine()}, `{command.strip()}` (median of {args.repeats} rounds; the "
        f"target is at most 1 ms per image).\n\n{table}\n"
    )
    print(text)
    if args.write_docs:
        write_block(BEGIN, END, text, heading="The safety gate's cost per image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
