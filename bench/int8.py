"""fp32 against INT8 on ONNX Runtime CPU: latency at batch 1 and at the best batch, images/s, and labels
and accuracy on the test images of the bundle's own split.

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


def _median_s(runtime: OnnxRuntime, batch: np.ndarray, repeats: int) -> float:
    runtime.predict(batch)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        runtime.predict(batch)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _measure(runtime: OnnxRuntime, images: np.ndarray, repeats: int) -> dict:
    latency = {n: _median_s(runtime, images[:n], repeats) for n in BATCHES}
    best = max(BATCHES, key=lambda n: n / latency[n])
    predicted = np.concatenate([runtime.predict(images[i : i + 16])[0] for i in range(0, len(images), 16)])
    return {"latency": latency, "best": best, "labels": predicted.argmax(1)}


def int8_section(bundle_dir: Path, split_path: Path, repeats: int, command: str) -> str:
    """The fp32/INT8 table of the bundle on the test images of its split, as markdown."""
    bundle = load_bundle(bundle_dir)
    split = read_final_split(split_path)
    index = {name: i for i, name in enumerate(bundle.class_names)}
    test = split["test"] or split["val"]
    images = preprocess_batch([open_image(s.path) for s in test], bundle.preprocess)
    labels = np.array([index[s.label] for s in test])
    with tempfile.TemporaryDirectory() as scratch:
        int8_path = bundle.int8_onnx_path
        if int8_path is None:
            int8_path = Path(scratch) / "model.int8.onnx"
            calibration = [open_image(s.path) for s in split["train"][:512]]
            quantize_onnx(bundle.onnx_path, int8_path, calibration, bundle.preprocess)
        threads = cpu_count()
        runs = {
            "fp32": _measure(OnnxRuntime(bundle.onnx_path, threads=threads), images, repeats),
            "int8": _measure(OnnxRuntime(int8_path, threads=threads, precision="int8"), images, repeats),
        }
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
        ["model", "batch 1 ms", "best batch (ms)", "img/s batch 1", "img/s best", "test accuracy"], rows
    )
    met = "met" if ratio >= TARGET else "not met"
    return (
        f"`{command}` ({now()}; {machine()}; {bundle.name}, {len(labels)} test images, "
        f"medians of {repeats} runs, {threads} threads)\n\n{table}\n\n"
        f"INT8 / fp32 images/s: **{ratio:.2f}x** at the best batch, {ratio_b1:.2f}x at batch 1; target "
        f"{TARGET}x: **{met}**. INT8 gives the fp32 label for {agreement:.1%} of the test images."
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
