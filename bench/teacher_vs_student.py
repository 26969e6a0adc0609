"""Item 2: teacher against student, from the training side's own command (`python -m model_training
bench`), on the paper's architectures at 384 px."""

from __future__ import annotations

import subprocess
import sys

from bench.bundles import CACHE, REPO_ROOT, bench_bundle

__all__ = ["teacher_vs_student"]


def _model_bench(bundles: list, out_name: str, runs: int, batch_sizes: list[int]) -> str:
    out = CACHE / out_name
    command = [
        sys.executable, "-m", "model_training", "bench", "--bundles", *map(str, bundles),
        "--out", str(out), "--runs", str(runs), "--batch-sizes", *map(str, batch_sizes),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"python -m model_training bench failed: {result.stderr[-1500:]}")
    shown = " ".join(["python -m model_training bench --bundles", *(b.name for b in bundles)])
    return (
        f"`{shown} --runs {runs} --batch-sizes {' '.join(map(str, batch_sizes))}`\n\n"
        + out.with_suffix(".md").read_text()
    )


def teacher_vs_student(quick: bool) -> str:
    student = bench_bundle("student")
    teacher = None if quick else bench_bundle("teacher")
    parts = ["## 2. Teacher against student (efficiency)"]
    parts.append(
        "Random weights (speed and size do not depend on them), 384 px, 3 classes, latency on this CPU "
        "(GPU figures: see the GPU section when a session had one)."
    )
    if quick:
        # The teacher takes seconds per image on this CPU: the quick run leaves it to the full run.
        parts.append(_model_bench([student], "models-student", 5, [1, 8]))
        parts.append("Quick run: student only; `make bench` (the full run) adds the teacher.")
    else:
        parts.append(_model_bench([student, teacher], "models", 3, [1, 8]))
    return "\n\n".join(parts)
