"""Serving on a GPU: the student through the service's own PyTorch runtime (bare, by batch size and
precision), reduced precision measured against fp32 on real B-scans, and the real service (uvicorn,
micro-batching on CUDA, SQLite logging) under concurrent HTTP load.

    PYTHONPATH=. python -m bench.gpu_serving --images DIR --out results.json

DIR holds real OCT JPEGs (e.g. a copy of some of ../shared/data/oct2017-sample). Weights are random
(speed only); the precision differences are therefore those of an untrained network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdoct.models import create_model
from kdoct.preprocess import PreprocessSpec, preprocess_batch
from kdoct.probabilities import softmax
from kdoct_testing.bundles import GateImages, build_test_bundle
from kdoct_testing.server import running_service
from service.inference.torch_runtime import TorchRuntime

SPEC = PreprocessSpec(input_size=(384, 384))
DEVICE = "cuda"
STUDENT_ARCH, TEACHER_ARCH = "efficientnet_b2", "convnextv2_large"


def median_seconds(function, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_runtime(model, inputs: np.ndarray, precisions, batch_sizes, repeats) -> list[dict]:
    rows = []
    for precision in precisions:
        runtime = TorchRuntime(model, device=DEVICE, precision=precision)
        for batch_size in batch_sizes:
            batch = np.ascontiguousarray(np.resize(inputs, (batch_size, *inputs.shape[1:])))
            seconds = median_seconds(lambda b=batch, r=runtime: r.predict_logits(b), repeats)
            rows.append(
                {
                    "precision": precision,
                    "batch_size": batch_size,
                    "median_ms": seconds * 1e3,
                    "images_per_s": batch_size / seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def precision_differences(model, inputs: np.ndarray) -> list[dict]:
    reference = softmax(TorchRuntime(model, device=DEVICE, precision="fp32").predict_logits(inputs))
    rows = []
    for precision in ("fp16", "bf16") if DEVICE == "cuda" else ():
        probabilities = softmax(
            TorchRuntime(model, device=DEVICE, precision=precision).predict_logits(inputs)
        )
        rows.append(
            {
                "precision": precision,
                "images": len(inputs),
                "max_abs_diff": float(np.abs(probabilities - reference).max()),
                "mean_abs_diff": float(np.abs(probabilities - reference).mean()),
                "label_changes": int((probabilities.argmax(1) != reference.argmax(1)).sum()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def build_student_bundle(directory: Path, images: list[Image.Image]) -> Path:
    # Served by the torch runtime: no ONNX export (minutes for the real student, and unused).
    build_test_bundle(
        directory,
        STUDENT_ARCH,
        SPEC.input_size,
        "student",
        images[:3],
        seed=0,
        name="bench-student",
        version="0.0.0",
        onnx=False,
        # The service applies its safety gate by default; random weights, so any labels will do.
        gate=GateImages(images[:24], [index % 3 for index in range(24)], images[24:40]),
    )
    return directory


async def http_load(url: str, payloads: list[bytes], concurrency: int, total: int) -> dict:
    import httpx

    latencies, statuses, server_timings = [], {}, []
    counter = iter(range(total))

    async def worker(client):
        for index in counter:
            body = payloads[index % len(payloads)]
            started = time.perf_counter()
            response = await client.post(url, files={"file": ("scan.jpeg", body, "image/jpeg")})
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                server_timings.append(response.json()["timing_ms"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    quantiles = np.percentile(np.array(latencies) * 1e3, [50, 95, 99])
    return {
        "concurrency": concurrency,
        "requests": total,
        "images_per_s": total / elapsed,
        "p50_ms": quantiles[0],
        "p95_ms": quantiles[1],
        "p99_ms": quantiles[2],
        "statuses": {str(k): v for k, v in statuses.items()},
        "server_ms": {
            key: {
                "p50": float(np.percentile([t[key] for t in server_timings], 50)),
                "p99": float(np.percentile([t[key] for t in server_timings], 99)),
            }
            for key in (server_timings[0] if server_timings else {})
        },
    }


def serve_and_load(
    bundle: Path, precision: str, payloads: list[bytes], levels, per_level: int, variant: str = "disk"
) -> list[dict]:
    """variant: disk (SQLite + spool on disk), shm (on /dev/shm: no fsync cost), shm-omp1 (also
    OMP_NUM_THREADS=1 against CPU thread oversubscription)."""
    workdir = Path(
        tempfile.mkdtemp(prefix="kdoct-gpu-serve-", dir="/dev/shm" if variant.startswith("shm") else None)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDOCT_")}
    env.update(
        KDOCT_STUDENT_BUNDLE=str(bundle),
        KDOCT_RUNTIME="torch",
        KDOCT_DEVICE=DEVICE,
        KDOCT_PRECISION=precision,
        KDOCT_AUTH="disabled",
        KDOCT_DECODE_THREADS="12",
        KDOCT_MAX_QUEUE="1024",
        KDOCT_DATABASE_URL=f"sqlite:///{workdir}/kdoct.db",
        KDOCT_SPOOL_DIR=str(workdir / "spool"),
        KDOCT_LOG_LEVEL="warning",
    )
    if variant.endswith("omp1"):
        env["OMP_NUM_THREADS"] = "1"
    rows = []
    repo_root = Path(__file__).resolve().parents[1]
    with running_service(
        env, repo_root, workdir / "server.log", ready_timeout_s=120, stop_timeout_s=60
    ) as service:
        url = f"{service.url}/classify"
        asyncio.run(http_load(url, payloads, 8, 64))  # warm-up
        for concurrency in levels:
            row = asyncio.run(http_load(url, payloads, concurrency, max(per_level, concurrency * 4)))
            row["precision"] = precision
            row["variant"] = variant
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--service-only", action="store_true", help="skip the bare-runtime measurements")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny models, 96 px: checks the script only"
    )
    args = parser.parse_args()
    global SPEC, DEVICE, STUDENT_ARCH, TEACHER_ARCH
    if args.dry_run:
        SPEC, DEVICE = PreprocessSpec(input_size=(96, 96)), "cpu"
        STUDENT_ARCH, TEACHER_ARCH = "test_efficientnet", "test_convnext"
    precisions = ("fp32", "bf16", "fp16") if DEVICE == "cuda" else ("fp32",)
    paths = sorted(args.images.rglob("*.jpeg"))[:64]
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            images.append(image)
    payloads = [path.read_bytes() for path in paths]
    inputs = preprocess_batch(images, SPEC)
    results = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": len(images),
    }

    torch.manual_seed(0)
    student = create_model(STUDENT_ARCH, 3).eval()
    if not args.service_only:
        measure_bare(results, student, inputs, precisions, args.repeats)
    bundle = build_student_bundle(Path(tempfile.mkdtemp(prefix="kdoct-gpu-bundle-")) / "student", images)
    results["service"] = []
    for precision, variant in [("fp32", "disk"), ("fp32", "shm"), ("fp32", "shm-omp1"), ("bf16", "shm")]:
        if precision in precisions:
            results["service"] += serve_and_load(
                bundle, precision, payloads, (1, 16, 64), args.requests, variant
            )
    args.out.write_text(json.dumps(results, indent=1))


def measure_bare(results, student, inputs, precisions, repeats) -> None:
    results["student_bare"] = bare_runtime(student, inputs, precisions, (1, 8, 32, 64, 128), repeats)
    results["student_precision"] = precision_differences(student, inputs)
    teacher = create_model(TEACHER_ARCH, 3).eval()
    results["teacher_bare"] = bare_runtime(teacher, inputs, precisions[:2], (1, 8, 32), max(5, repeats // 4))
    results["teacher_precision"] = precision_differences(teacher, inputs)
    del teacher
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
