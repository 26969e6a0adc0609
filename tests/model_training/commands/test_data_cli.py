"""`python -m model_training synth | index | folds`, run as a user would, in a subprocess."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from model_training.cli import main


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_training", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_synth_then_folds(tmp_path: Path) -> None:
    args = ["--patients", "12", "--bscans-per-patient", "4", "--classes", "neh3", "--size", "128x124"]
    first = _run("synth", "--out", "a", *args, "--seed", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote 48 images" in first.stdout
    # The second run in-process: the same code path, without paying another interpreter start.
    assert main(["synth", "--out", str(tmp_path / "b"), *args, "--seed", "1"]) == 0
    images = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(images) == 48 and {p.parts[0] for p in images} == {"NORMAL", "DRUSEN", "CNV"}
    for name in [*images, Path("manifest.csv")]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    fold_args = ["--manifest", "a/manifest.csv", "--k", "3", "--seed", "43", "--out", "folds.csv"]
    folds = _run("folds", *fold_args, cwd=tmp_path)
    assert folds.returncode == 0, folds.stderr
    assert "whole" in folds.stdout and "fold 2 test" in folds.stdout
    rows = _rows(tmp_path / "folds.csv")
    assert len(rows) == 48 and {"fold_0", "fold_1", "fold_2"} <= set(rows[0])
    assert "fold_3" not in rows[0]


def test_index_kermany_sample(tmp_path: Path, sample_dir: Path) -> None:
    args = ["--root", str(sample_dir), "--layout", "kermany", "--classes", "neh3", "--out", "m.csv"]
    result = _run("index", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _rows(tmp_path / "m.csv")
    assert len(rows) == 513
    assert all(row["patient_id"].isdigit() for row in rows)


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    missing = _run("index", "--root", "nowhere", "--layout", "kermany", "--out", "m.csv", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "nowhere: not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_bad_manifest_and_bad_count_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.csv").write_text("path,label\na.png,cnv\n")
    assert main(["folds", "--manifest", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "f.csv")]) == 2
    assert "bad.csv: missing column(s) patient_id" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "d"), "--patients", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synth", "index", "folds"])
def test_help_for_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert f"usage: python -m model_training {command}" in capsys.readouterr().out


def test_unknown_class_set_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--out", "x", "--classes", "amd5"]) == 2
    assert "unknown class set 'amd5'" in capsys.readouterr().err
