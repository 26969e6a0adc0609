"""Efficiency table of bundles: parameters, size on disk, GFLOPs, latency (median) at batch 1 and 8
for PyTorch and ONNX Runtime on this CPU, and on CUDA when present."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdoct.bundle import load_bundle

__all__ = ["bench_bundles", "gflops", "median_latency_ms", "write_bench"]


def median_latency_ms(call: Callable[[], Any], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def gflops(model: torch.nn.Module, input_size: tuple[int, int]) -> float:
    """FLOPs of one image (batch 1) as torch's FlopCounterMode counts them (a multiply-add = 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, *input_size))
    return counter.get_total_flops() / 1e9


def _torch_runner(model, batch: np.ndarray, device: str):
    tensor = torch.from_numpy(batch).to(device)
    model = model.to(device)

    def call():
        with torch.inference_mode():
            model(tensor)
        if device == "cuda":
            torch.cuda.synchronize()

    return call


def _ort_runner(onnx_path: Path, batch: np.ndarray, provider: str):
    session = ort.InferenceSession(str(onnx_path), providers=[provider])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: batch})


def bench_bundles(
    bundle_dirs: Sequence[str | Path], *, batch_sizes=(1, 8), runs: int = 30, warmup: int = 5
) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    results = []
    for directory in bundle_dirs:
        bundle = load_bundle(directory)
        model = bundle.model().eval()
        height, width = bundle.preprocess.input_size
        row: dict[str, Any] = {
            "bundle": str(directory),
            "name": bundle.name,
            "arch": bundle.arch,
            "input_size": [height, width],
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "safetensors_mb": (bundle.path / "model.safetensors").stat().st_size / 1e6,
            "onnx_mb": bundle.onnx_path.stat().st_size / 1e6 if bundle.onnx_path else None,
            "gflops": gflops(model, (height, width)),
            "latency_ms": {},
        }
        rng = np.random.default_rng(0)
        for batch_size in batch_sizes:
            batch = rng.standard_normal((batch_size, 3, height, width)).astype(np.float32)
            timings = {"torch_cpu": median_latency_ms(_torch_runner(model, batch, "cpu"), runs, warmup)}
            if bundle.onnx_path:
                runner = _ort_runner(bundle.onnx_path, batch, "CPUExecutionProvider")
                timings["onnxruntime_cpu"] = median_latency_ms(runner, runs, warmup)
            if cuda:
                timings["torch_cuda"] = median_latency_ms(_torch_runner(model, batch, "cuda"), runs, warmup)
                model.cpu()
            if cuda and ort_cuda and bundle.onnx_path:
                runner = _ort_runner(bundle.onnx_path, batch, "CUDAExecutionProvider")
                timings["onnxruntime_cuda"] = median_latency_ms(runner, runs, warmup)
            row["latency_ms"][f"batch_{batch_size}"] = timings
        results.append(row)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if cuda else None,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "runs": runs,
        "statistic": "median",
        "results": results,
    }


def write_bench(report: dict[str, Any], out_prefix: Path) -> tuple[Path, Path]:
    """Write OUT.json and OUT.md; returns both paths."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = out_prefix.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    runtimes = sorted({rt for r in report["results"] for t in r["latency_ms"].values() for rt in t})
    batches = list(report["results"][0]["latency_ms"]) if report["results"] else []
    header = ["model", "arch", "input", "params (M)", "safetensors (MB)", "GFLOPs"]
    header += [f"{rt} {b.replace('_', ' ')} (ms)" for b in batches for rt in runtimes]
    lines = [
        f"Median of {report['runs']} runs; machine: {report['machine']['processor']}, "
        f"{report['machine']['cpu_count']} CPUs, {report['machine']['torch_threads']} torch threads, "
        f"CUDA: {report['machine']['cuda'] or 'none'}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in report["results"]:
        cells = [
            r["name"],
            r["arch"],
            f"{r['input_size'][0]}",
            f"{r['params_m']:.2f}",
            f"{r['safetensors_mb']:.1f}",
        ]
        cells.append(f"{r['gflops']:.2f}")
        for b in batches:
            for rt in runtimes:
                value = r["latency_ms"][b].get(rt)
                cells.append(f"{value:.1f}" if value is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out_prefix.with_suffix(".md")
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path
