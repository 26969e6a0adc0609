"""What one Grad-CAM explanation costs: median milliseconds per real B-scan, on this machine.

    python -m bench.explain_cost                       # efficientnet_b2 at 384 px, random weights
    python -m bench.explain_cost --bundle path/to/student-bundle --threads 2 --write-docs

Random weights cost the same as trained ones, so no trained bundle is needed for the figure. Two
figures: the heatmap alone (backbone forward, head backward) and the whole explanation as the API
answers it (plus the overlay PNG). With --write-docs the figures and the command go into
docs/BENCHMARKS.md between this script's markers, leaving the rest of the file alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bench.report import machine, now
from kdoct.bundle import load_bundle
from kdoct_testing.bundles import build_test_bundle
from service.explain import GradCam

REPO_ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench.explain_cost")

DOCS = REPO_ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- explain_cost:begin -->", "<!-- explain_cost:end -->"
DEFAULT_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "oct2017-sample"


def _load_scans(sample_dir: Path, count: int) -> list[Image.Image]:
    paths = sorted(sample_dir.glob("*/*.jpeg"))[:: max(1, len(list(sample_dir.glob("*/*.jpeg"))) // count)][
        :count
    ]
    if not paths:
        raise SystemExit(f"no JPEG B-scans under {sample_dir}: pass --sample-dir")
    scans = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            scans.append(image)
    return scans


def _timings_ms(run, scans: list[Image.Image], repeats: int, label: str) -> tuple[float, float]:
    """(median, fastest): a fastest far below the median says the machine was busy meanwhile."""
    timings = []
    for _ in tqdm(range(repeats), desc=label, unit="round"):
        for scan in scans:
            start = time.perf_counter()
            run(scan)
            timings.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings), min(timings)


def _write_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a student bundle (default: random weights, see --arch)")
    parser.add_argument("--arch", default="efficientnet_b2")
    parser.add_argument("--size", type=int, default=384, help="input size when no --bundle is given")
    parser.add_argument("--sample-dir", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--write-docs", action="store_true", help=f"record the figures in {DOCS}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        bundle = (
            load_bundle(args.bundle)
            if args.bundle
            # Random weights and no ONNX: Grad-CAM runs on PyTorch and costs the same either way.
            else build_test_bundle(
                Path(scratch) / "b",
                args.arch,
                (args.size, args.size),
                "student",
                golden_images=[],
                seed=0,
                name=f"bench-{args.arch}",
                version="random",
                onnx=False,
            )
        )
        explainer = GradCam(bundle)
        scans = _load_scans(args.sample_dir, args.images)
        explainer.explain(scans[0])  # warm-up: builds the model, first-call allocations
        heatmap_ms = _timings_ms(lambda scan: explainer.heatmaps(scan), scans, args.repeats, "heatmap")
        full_ms = _timings_ms(explainer.explain, scans, args.repeats, "explanation")
        height, width = bundle.preprocess.input_size

    command = "python -m bench.explain_cost " + shlex.join(argv if argv is not None else sys.argv[1:])
    section = "\n".join(
        [
            "## Grad-CAM explanation cost (`explain=true`)",
            "",
            f"{now()} on {machine()}: {bundle.arch} at {height}x{width}, PyTorch {torch.__version__} "
            f"on CPU, {args.threads} thread(s); {len(scans) * args.repeats} real B-scans.",
            "",
            "| what | median ms | fastest ms |",
            "|---|---|---|",
            f"| heatmap (backbone forward + head backward) | {heatmap_ms[0]:.1f} | {heatmap_ms[1]:.1f} |",
            f"| whole explanation (+ overlay PNG, as answered) | {full_ms[0]:.1f} | {full_ms[1]:.1f} |",
            "",
            f"Machine load while measuring (1-min average): {os.getloadavg()[0]:.1f}.",
            "",
            f"Command: `{command.strip()}`",
        ]
    )
    log.info("%s", section)
    if args.write_docs:
        _write_docs(section)
        log.info("written to %s", DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
