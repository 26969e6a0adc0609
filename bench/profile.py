"""Where the service's time goes under load: py-spy samples the real server (all threads, native
frames folded into their Python callers) while the closed-loop client keeps 16 requests in flight."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

from bench.bundles import CACHE, bench_bundle, sample_jpegs
from bench.report import markdown_table
from bench.server import ServiceProcess
from kdoct_testing.load_client import build_classify_requests, closed_loop

__all__ = ["profile_service", "summarise_collapsed"]

# Threads are named by the service (kdoct-decode-*, kdoct-infer-*); the event loop is the main thread.
_STAGES = [
    ("inference (ONNX Runtime)", ("onnxruntime", "predict_logits")),
    ("decode + preprocess", ("decode_upload", "preprocess_array", "prepare", "PIL")),
    ("records (writer, database)", ("service/db", "sqlalchemy", "psycopg", "sqlite3")),
    (
        "HTTP, multipart, JSON (event loop)",
        ("uvicorn", "starlette", "fastapi", "multipart", "json", "asyncio"),
    ),
]


def summarise_collapsed(path: Path, top: int = 12) -> tuple[list[list[str]], list[list[str]]]:
    """(stage shares, top leaf functions) from py-spy's collapsed-stack output."""
    leaves, stages, total = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and "idle" in frames[-1]:
            continue
        total += count
        leaves[frames[-1].split(" (")[0]] += count
        stage = next((name for name, keys in _STAGES if any(key in stack for key in keys)), "other")
        stages[stage] += count
    if not total:
        return [], []
    stage_rows = [[name, f"{100 * count / total:.1f} %"] for name, count in stages.most_common()]
    leaf_rows = [
        [f"`{name[:90]}`", f"{100 * count / total:.1f} %"] for name, count in leaves.most_common(top)
    ]
    return stage_rows, leaf_rows


def profile_service(quick: bool) -> str:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        return "## Profile\n\npy-spy is not installed (`pip install -e '.[dev]'`)."
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds = 6 if quick else 15
    workdir = CACHE / "runs" / f"profile-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "profile.collapsed"
    settings = {"KDOCT_DATABASE_URL": f"sqlite:///{workdir / 'records.db'}"}
    server = ServiceProcess(bench_bundle("student"), workdir, database_url=settings["KDOCT_DATABASE_URL"])
    with server:
        requests = build_classify_requests(sample_jpegs(64), "127.0.0.1", server.port, server.api_key)
        command = [py_spy, "record", "--pid", str(server.pid), "--duration", str(seconds), "--rate", "100",
                   "--format", "raw", "--output", str(out), "--threads", "--nonblocking"]  # fmt: skip
        sampler = threading.Thread(
            target=subprocess.run, args=(command,), kwargs={"capture_output": True}, daemon=True
        )
        sampler.start()
        result = asyncio.run(
            closed_loop("127.0.0.1", server.port, requests, concurrency=16, duration_s=seconds, warmup_s=0.5)
        )
        sampler.join(timeout=seconds + 30)
    if not out.exists():
        return "## Profile\n\npy-spy produced no samples (it needs ptrace permission: run as root or set " \
               "kernel.yama.ptrace_scope=0)."  # fmt: skip
    stages, leaves = summarise_collapsed(out)
    return "\n\n".join(
        [
            "## Profile of the service under load",
            f"`py-spy record --threads --nonblocking` on the server, {seconds} s at concurrency 16 "
            f"({result.throughput:.1f} images/s, SQLite records); share of non-idle samples.",
            markdown_table(["stage (any frame on the stack)", "samples"], stages),
            markdown_table(["top leaf function", "samples"], leaves),
        ]
    )
