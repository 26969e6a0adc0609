"""fp32 against INT8 on ONNX Runtime CPU: latency at batch 1 and at the best batch, images/s, and labels
and accuracy on the test images of the bundle's own split (its training images for a model trained on
every patient). The two models are timed in turn, batch by batch, within each repeat: this host's speed
drifts within minutes, and one model measured after the other would carry the drift into the ratio.

    python -m bench.int8 --bundle DIR/student --split DIR/split.csv [--repeats 20] [--write-docs]

The bundle needs model.int8.onnx (`python -m model_training export --from-bundle DIR/student --int8`);
without one it is quantized here, in a temporary directory, exactly as export does (its accuracy
gate is not applied: this measures, it does not ship). Sessions use every core of this machine, like
the service. Medians of `repeats` runs per batch size. Target (issue 17): INT8 >= 1.8x fp32 images/s.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import machine, markdown_table, now, write_block
from kdoct.bundle import load_bundle
from kdoct.preprocess import preprocess_batch
from model_training.data.final_split import read_final_split
from model_training.data.image_cache import open_image
from model_training.export.int8 import quantize_onnx
from service.inference.onnx_runtime import OnnxRuntime
from service.inference.runtime import cpu_count

BEGIN, END = "<!-- int8:begin -->", "<!-- int8:end -->"
BATCHES = (1, 4, 8, 16)
TARGET = 1.8


def _interleaved(runtimes: dict[str, OnnxRuntime], images: np.ndarray, repeats: int) -> dict[str, dict]:
    """Median latency per model and batch size, the models timed in turn within each repeat (the order
    alternating from one repeat to the next), so that the host's drift lands on both alike."""
    times: dict[str, dict[int, list[float]]] = {name: {n: [] for n in BATCHES} for name in runtimes}
    for runtime in runtimes.values():
        for n in BATCHES:
            runtime.predict(images[:n])  # first use of each shape: not timed
    names = list(runtimes)
    for repeat in range(repeats):
        for n in BATCHES:
            for name in names if repeat % 2 == 0 else names[::-1]:
                began = time.perf_counter()
                runtimes[name].predict(images[:n])
                times[name][n].append(time.perf_counter() - began)
    runs = {}
    for name, runtime in runtimes.items():
        latency = {n: statistics.median(times[name][n]) for n in BATCHES}
        best = max(BATCHES, key=lambda n, latency=latency: n / latency[n])
        rows = [runtime.predict(images[i : i + 16])[0] for i in range(0, len(images), 16)]
        runs[name] = {"latency": latency, "best": best, "labels": np.concatenate(rows).argmax(1)}
    return runs


def _images(split: dict[str, list]) -> tuple[list, str]:
    """The images to label: the split's test patients, else its held-back ones, else (a model trained on
    every patient) its training images, which say how faithful INT8 is, not how accurate the model is."""
    for role, words in (("test", "test"), ("val", "held-back"), ("train", "training")):
        if split[role]:
            return split[role], words
    raise ValueError("the split has no images")


def int8_section(bundle_dir: Path, split_path: Path, repeats: int, command: str) -> str:
    """The fp32/INT8 table of the bundle on the images of its split, as markdown."""
    bundle = load_bundle(bundle_dir)
    split = read_final_split(split_path)
    index = {name: i for i, name in enumerate(bundle.class_names)}
    samples, which = _images(split)
    images = preprocess_batch([open_image(s.path) for s in samples], bundle.preprocess)
    labels = np.array([index[s.label] for s in samples])
    with tempfile.TemporaryDirectory() as scratch:
        int8_path = bundle.int8_onnx_path
        if int8_path is None:
            int8_path = Path(scratch) / "model.int8.onnx"
            calibration = [open_image(s.path) for s in split["train"][:512]]
            quantize_onnx(bundle.onnx_path, int8_path, calibration, bundle.preprocess)
        threads = cpu_count()
        runtimes = {
            "fp32": OnnxRuntime(bundle.onnx_path, threads=threads),
            "int8": OnnxRuntime(int8_path, threads=threads, precision="int8"),
        }
        runs = _interleaved(runtimes, images, repeats)
    rows = []
    for name, run in runs.items():
        lat = run["latency"]
        rows.append(
            [
                name,
                f"{lat[1] * 1e3:.1f}",
                f"{run['best']} ({lat[run['best']] * 1e3:.1f})",
                f"{1 / lat[1]:.1f}",
                f"{run['best'] / lat[run['best']]:.1f}",
                f"{(run['labels'] == labels).mean():.3f}",
            ]
        )
    speed = {name: run["best"] / run["latency"][run["best"]] for name, run in runs.items()}
    ratio = speed["int8"] / speed["fp32"]
    ratio_b1 = runs["fp32"]["latency"][1] / runs["int8"]["latency"][1]
    agreement = float((runs["int8"]["labels"] == runs["fp32"]["labels"]).mean())
    table = markdown_table(
        [
            "model",
            "batch 1 ms",
            "best batch (ms)",
            "img/s batch 1",
            "img/s best",
            f"accuracy ({which} images)",
        ],
        rows,
    )
    met = "met" if ratio >= TARGET else "not met"
    return (
        f"`{command}` ({now()}; {machine()}; {bundle.name}, {len(labels)} {which} images, fp32 and INT8 "
        f"timed in turn, medians of {repeats} runs each, {threads} threads)\n\n{table}\n\n"
        f"INT8 / fp32 images/s: **{ratio:.2f}x** at the best batch, {ratio_b1:.2f}x at batch 1; target "
        f"{TARGET}x: **{met}**. INT8 gives the fp32 label for {agreement:.1%} of the {which} images."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="the run's split.csv (test role)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.int8 " + shlex.join(sys.argv[1:] if argv is None else argv)
    section = int8_section(args.bundle, args.split, args.repeats, command)
    print(section)
    if args.write_docs:
        write_block(BEGIN, END, section, heading="INT8 student (issue 17)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
