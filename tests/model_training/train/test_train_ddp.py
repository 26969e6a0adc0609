"""Scale-out: the same `cv` command under torchrun with 2 CPU processes (gloo, DistributedSampler)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kdoct.bundle import load_bundle

REPO = Path(__file__).resolve().parents[3]
SMOKE = REPO / "model_training" / "configs" / "smoke.yaml"


def test_cv_runs_under_torchrun_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "model_training", "cv", "--config", str(SMOKE), "--out", str(out),
        "--set", "folds_to_run=[0]", "--set", "teacher.epochs=1", "--set", "teacher.swa.enabled=false",
        "--set", "teacher.freeze_epochs=0", "--set", "teacher.warmup_epochs=0", "--set", "student.epochs=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    for role in ("teacher", "student"):
        bundle = load_bundle(out / "fold_0" / role)
        assert bundle.manifest["provenance"]["training"]["world_size"] == 2
        # Rank 0 alone writes the per-epoch log: one line per epoch, not one per process.
        log_lines = (out / "fold_0" / "work" / role / "log.jsonl").read_text().splitlines()
        assert len(log_lines) == 1 and json.loads(log_lines[0])["epoch"] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["folds"] == [0]
    assert (out / "fold_0" / "predictions.csv").is_file()
