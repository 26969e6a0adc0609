"""`final`: the deployable teacher and student on every patient but a held-back calibration slice and
a test slice; each bundle with its safety gate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from training_cli import SMOKE, run_cli

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError, LeakageError
from kdoct.safety import GATE_JSON, load_gate
from model_training.config import load_config
from model_training.data.final_split import read_final_split
from model_training.runs.final import chosen_epochs


def _cv_report(path: Path) -> Path:
    """A cv report's training record: the teacher exported its SWA average after 3 epochs in both
    folds; the student's best checkpoints were at epochs 0 and 1 (0-based) of 2."""
    report = {
        "teacher": {"training": {"folds": [
            {"fold": 0, "epochs_run": 3, "best_epoch": 2, "selected_weights": "swa"},
            {"fold": 1, "epochs_run": 3, "best_epoch": 1, "selected_weights": "swa"},
        ]}},
        "student": {"training": {"folds": [
            {"fold": 0, "epochs_run": 2, "best_epoch": 0, "selected_weights": "best_checkpoint"},
            {"fold": 1, "epochs_run": 2, "best_epoch": 0, "selected_weights": "best_checkpoint"},
        ]}},
    }  # fmt: skip
    path.write_text(json.dumps(report))
    return path


def _final_args(out: Path, report: Path) -> list[str]:
    return [
        "final", "--config", str(SMOKE), "--out", str(out), "--holdout", "0.25", "--test-fraction", "0.25",
        "--epochs-from", str(report),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def final_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("final")
    report = _cv_report(root / "report.json")
    out = root / "run"
    result = run_cli(*_final_args(out, report))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "card:" in result.stdout
    return out


def test_final_trains_on_every_patient_but_a_held_back_and_a_test_slice(final_run):
    split = read_final_split(final_run / "split.csv")
    with open(final_run / "manifest.csv", newline="") as handle:
        everyone = {row["patient_id"] for row in csv.DictReader(handle)}
    trained = {s.patient_id for s in split["train"]}
    held_back = {s.patient_id for s in split["val"]}
    tested = {s.patient_id for s in split["test"]}
    assert trained | held_back | tested == everyone
    assert not trained & held_back and not trained & tested and not held_back & tested
    assert len(held_back) == 4 and len(tested) == 4  # a quarter each of the smoke data's 16 patients
    card = json.loads((final_run / "card.json").read_text())
    assert card["data"]["training"]["patients"] == len(trained)
    assert card["data"]["held_back"]["images"] == len(split["val"])
    assert card["data"]["test"]["images"] == len(split["test"])
    for role in ("teacher", "student"):
        bundle = load_bundle(final_run / role)
        provenance = bundle.manifest["provenance"]
        assert provenance["fold"] is None
        assert bundle.manifest["calibration"]["fitted_on"] == "validation"
        assert card["models"][role]["sha256"] == bundle.sha256
        # The safety gate: fitted on the training patients, its threshold on the held-back slice.
        gate = load_gate(bundle.path, bundle.manifest["files"])
        assert gate.summary["quality"]["fitted_on_images"] == len(split["train"])
        assert gate.summary["ood"]["threshold_on_images"] == len(split["val"])
        # Golden images come from the held-back slice, never from the training patients.
        checkpoint = torch.load(final_run / "work" / role / "final.pt", map_location="cpu", weights_only=True)
        assert checkpoint["golden_paths"] and set(checkpoint["golden_paths"]) <= {
            s.path for s in split["val"]
        }
    assert "Final model card" in (final_run / "MODEL_CARD.md").read_text()


def test_final_epochs_come_from_the_cv_report_and_are_recorded(final_run):
    card = json.loads((final_run / "card.json").read_text())
    assert card["models"]["teacher"]["epochs"]["epochs"] == 3  # every epoch of the SWA folds
    assert card["models"]["student"]["epochs"]["epochs"] == 1  # best epoch 0 -> 1 epoch
    assert card["models"]["student"]["epochs"]["per_fold"] == [1, 1]
    teacher = load_bundle(final_run / "teacher").manifest["provenance"]["training"]
    student = load_bundle(final_run / "student").manifest["provenance"]["training"]
    assert teacher["epochs_run"] == 3 and teacher["selected_weights"] == "swa"
    assert student["epochs_run"] == 1 and not student["stopped_early"]
    # The held-back slice calibrates; it does not also pick the weights.
    assert student["selected_weights"] == "last_epoch"


def test_final_is_instant_once_its_bundles_are_complete(final_run):
    before = (final_run / "student" / "bundle.json").read_bytes()
    result = run_cli(*_final_args(final_run, final_run.parent / "report.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (final_run / "student" / "bundle.json").read_bytes() == before


def test_a_bundle_exported_before_the_gate_is_exported_again_with_one(final_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(final_run, run, symlinks=True)
    # Strip the student's gate as an older version exported it: no gate files, manifest re-pinned.
    student = run / "student"
    manifest = json.loads((student / "bundle.json").read_text())
    for name in [n for n in manifest["files"] if n.startswith("safety/")]:
        (student / name).unlink()
        del manifest["files"][name]
    (student / "bundle.json").write_text(json.dumps(manifest))
    assert load_gate(student, load_bundle(student).manifest["files"]) is None
    result = run_cli(*_final_args(run, final_run.parent / "report.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert GATE_JSON in load_bundle(student).manifest["files"]
    assert "resumed" in result.stderr and "epoch 1/" not in result.stderr  # exported again, not retrained


def test_a_split_with_a_patient_on_both_sides_is_refused(final_run):
    with open(final_run / "split.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    patient = rows[1][2]
    scans = [row for row in rows[1:] if row[2] == patient]
    assert len(scans) >= 2  # the smoke data has 3 B-scans per patient
    scans[0][-1], scans[1][-1] = "train", "val"
    leaky = final_run / "leaky-split.csv"  # beside the original, so its relative paths still resolve
    with open(leaky, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(LeakageError, match=f"patient {patient}"):
        read_final_split(leaky)


def test_epochs_from_a_file_that_is_not_a_cv_report_is_refused(tmp_path):
    bogus = tmp_path / "report.json"
    bogus.write_text("{}")
    with pytest.raises(ConfigError, match="not a cv report.json"):
        chosen_epochs(load_config(SMOKE).teacher, "teacher", bogus)
    assert chosen_epochs(load_config(SMOKE).teacher, "teacher", None) == {"epochs": 3, "source": "config"}
