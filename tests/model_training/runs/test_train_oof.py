"""Every image trains the default model: `oof` (the cross-validated temperature and gate ratio), `final
--oof`, its recipe stamp (a changed recipe is retrained, kept or refused), INT8 with its own temperature,
and the ablation table."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from training_cli import SMOKE, run_cli

from kdoct.bundle import load_bundle
from kdoct.probabilities import softmax
from kdoct.safety import load_gate
from model_training.config import load_config
from model_training.data.final_split import read_final_split
from model_training.data.folds import read_folds
from model_training.data.image_cache import open_image
from model_training.evaluation.calibration import fit_temperature
from model_training.evaluation.oof import recipe_sha256
from model_training.export.int8 import Int8Gate, add_int8, fit_int8_temperature
from model_training.export.safety_fit import penultimate_features
from model_training.runs.final import _up_to_date
from model_training.runs.recipe_stamp import code_sha256

DME_IMAGES = 12


@pytest.fixture(scope="module")
def oof(smoke_run, sample_dir, tmp_path_factory) -> dict:
    """`oof` on the smoke run, with a few real DME B-scans as the disease outside its classes."""
    manifest = tmp_path_factory.mktemp("dme") / "manifest.csv"
    with open(sample_dir / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "DME"][:DME_IMAGES]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows([[str(sample_dir / r["path"]), r["label"], r["patient_id"]] for r in rows])
    result = run_cli("oof", "--run", str(smoke_run), "--ood-manifest", str(manifest), "--ood-label", "DME")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gate ratio" in result.stdout
    return json.loads((smoke_run / "oof.json").read_text())


def _fold_model_outputs(run: Path, fold: int, role: str):
    """Independently of oof.py: the fold bundle's raw test logits and its test images' OOD scores over
    the median score of its own training images."""
    split = read_folds(run / "folds.csv").split(fold)
    bundle = load_bundle(run / f"fold_{fold}" / role)
    gate = load_gate(bundle.path, bundle.manifest["files"])
    model = bundle.model().eval()
    _, train_features = penultimate_features(
        model, [open_image(s.path) for s in split["train"]], bundle.preprocess
    )
    logits, features = penultimate_features(
        model, [open_image(s.path) for s in split["test"]], bundle.preprocess
    )
    index = {name: i for i, name in enumerate(bundle.class_names)}
    labels = np.array([index[s.label] for s in split["test"]])
    return logits, labels, gate.ood.scores(features) / np.median(gate.ood.scores(train_features))


def test_oof_fits_the_temperature_and_the_gate_ratio_on_unseen_patients(smoke_run, oof):
    assert oof["recipe_sha256"] == recipe_sha256(load_config(SMOKE))
    for role in ("teacher", "student"):
        summary = oof["roles"][role]
        outputs = [_fold_model_outputs(smoke_run, fold, role) for fold in (0, 1)]
        logits = np.concatenate([o[0] for o in outputs])
        labels = np.concatenate([o[1] for o in outputs])
        ratios = np.concatenate([o[2] for o in outputs])
        assert summary["images"] == len(labels) == 48  # every smoke image, each once, out of fold
        assert summary["temperature"] == pytest.approx(fit_temperature(logits, labels), abs=1e-3)
        assert summary["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean(), abs=1e-4)
        assert np.allclose(summary["ood"]["ratios"], ratios, atol=1e-3)
        keep = summary["ood"]["keep"]
        assert keep == 0.98 and summary["ood"]["threshold_ratio"] == pytest.approx(
            np.quantile(ratios, keep), abs=1e-3
        )
        # Leave one fold out: fold 0 is judged by the ratio of fold 1's patients, and the other way round.
        flagged = summary["ood"]["flagged"]
        by_ood = sum(
            int((o[2] > np.quantile(other[2], keep)).sum())
            for o, other in zip(outputs, outputs[::-1], strict=True)
        )
        assert flagged["in_distribution"]["images"] == 48 and flagged["in_distribution"]["flagged"] >= by_ood
        assert flagged["DME"]["images"] == 2 * DME_IMAGES and flagged["non_oct"]["images"] > 30
        assert (
            0 <= summary["ece_leave_one_fold_out"] <= 1
            and "DME" in summary["ood"]["auroc_against_in_distribution"]
        )


@pytest.fixture(scope="module")
def oof_final(smoke_run, oof, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("final-oof") / "run"
    result = run_cli(
        "final", "--config", str(SMOKE), "--out", str(out), "--oof", str(smoke_run / "oof.json"),
        "--epochs-from", str(smoke_run / "report.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _final_args(smoke_run: Path, out: Path, *extra: str) -> list[str]:
    return [
        "final", "--config", str(SMOKE), "--out", str(out), "--oof", str(smoke_run / "oof.json"),
        "--epochs-from", str(smoke_run / "report.json"), *extra,
    ]  # fmt: skip


def test_final_with_oof_trains_on_every_patient_calibrated_by_cross_validation(smoke_run, oof, oof_final):
    split = read_final_split(oof_final / "split.csv")
    assert len(split["train"]) == 48 and not split["val"] and not split["test"]
    for role in ("teacher", "student"):
        bundle = load_bundle(oof_final / role)
        assert bundle.manifest["calibration"]["fitted_on"] == "cross-validation out-of-fold logits"
        assert bundle.temperature == oof["roles"][role]["temperature"]
        assert bundle.manifest["metrics"]["cross_validation"]["accuracy"] == oof["roles"][role]["accuracy"]
        # The threshold: the cross-validated ratio times this model's own median training-image score.
        gate = load_gate(bundle.path, bundle.manifest["files"])
        _, features = penultimate_features(
            bundle.model().eval(), [open_image(s.path) for s in split["train"]], bundle.preprocess
        )
        median = float(np.median(gate.ood.scores(features)))
        assert gate.ood.threshold == pytest.approx(
            oof["roles"][role]["ood"]["threshold_ratio"] * median, rel=1e-3
        )
        assert gate.summary["drift"]["validation_images"] == 48  # the unseen patients' scores, rescaled
        assert bundle.manifest["provenance"]["training"]["selected_weights"] in ("swa", "last_epoch")
    card = json.loads((oof_final / "card.json").read_text())
    assert set(card["recipe"]) == {
        "config_sha256",
        "data_sha256",
        "code_sha256",
        "epochs_from_sha256",
        "oof_sha256",
    }
    assert card["recipe"]["code_sha256"] == code_sha256()
    assert "Recipe stamp" in (oof_final / "MODEL_CARD.md").read_text()


def test_a_current_final_model_is_kept_and_a_changed_recipe_is_kept_or_refused_as_asked(smoke_run, oof_final):
    before = (oof_final / "student" / "bundle.json").read_bytes()
    again = run_cli(*_final_args(smoke_run, oof_final))
    assert again.returncode == 0 and "complete and current" in again.stderr
    # Training longer is the same recipe to cross-validation but another model: stale.
    changed = ("--set", "student.epochs=3")
    refused = run_cli(*_final_args(smoke_run, oof_final, *changed, "--if-stale", "fail"))
    assert refused.returncode == 2 and "changed since: the config" in refused.stderr
    kept = run_cli(*_final_args(smoke_run, oof_final, *changed, "--if-stale", "keep"))
    assert kept.returncode == 0 and "kept as asked" in kept.stderr
    assert (oof_final / "student" / "bundle.json").read_bytes() == before


def test_a_stale_final_model_is_moved_aside_for_retraining(oof_final, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(oof_final, run, symlinks=True)
    card = json.loads((run / "card.json").read_text())
    assert _up_to_date(run, card["recipe"], "retrain") == card
    assert _up_to_date(run, {**card["recipe"], "code_sha256": "0" * 64}, "retrain") is None
    assert not run.exists() and (tmp_path / "run.previous" / "card.json").is_file()


def test_oof_evidence_of_another_recipe_is_refused(smoke_run, oof, tmp_path):
    result = run_cli(*_final_args(smoke_run, tmp_path / "run", "--set", "student.input_size=48"))
    assert result.returncode == 2 and "measured another recipe" in result.stderr
    assert not (tmp_path / "run" / "student").exists()


def test_the_code_hash_ignores_docstrings_and_comments_not_code(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "a.py"
    source.write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    first = code_sha256([package])
    source.write_text(
        '"""Another module text."""\n\n\ndef f(x):  # why\n    """Other doc."""\n    return x + 1\n'
    )
    assert code_sha256([package]) == first
    source.write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert code_sha256([package]) != first


def test_the_int8_temperature_reproduces_the_fp32_calibrated_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 3))
    assert fit_int8_temperature(softmax(logits, 1.7), logits) == pytest.approx(1.7, rel=0.01)
    # INT8 logits twice as large as fp32's need twice the temperature for the same probabilities.
    assert fit_int8_temperature(softmax(logits, 0.8), 2 * logits) == pytest.approx(1.6, rel=0.01)


def test_int8_of_a_model_trained_on_every_patient_has_its_own_temperature_and_gate(oof_final, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(oof_final / "student", student)
    split = read_final_split(oof_final / "split.csv")
    bundle = load_bundle(student)
    index = {name: i for i, name in enumerate(bundle.class_names)}
    images = [open_image(s.path) for s in split["train"]]
    # Random smoke weights: the agreement limits are off; what is checked is how INT8 is calibrated.
    limits = Int8Gate(min_agreement=0, max_accuracy_drop=1, max_probability_diff_p95=1)
    labels = [index[s.label] for s in split["train"]]
    added = add_int8(
        student,
        calibration_images=images,
        val_images=[],
        val_labels=[],
        calibration_labels=labels,
        limits=limits,
    )
    figures = added.manifest["int8"]
    assert figures["checked_on"] == "training images" and figures["validation_images"] == 48
    assert added.int8_temperature == figures["temperature"] > 0
    # Each model's probabilities at its own temperature: INT8's fitted to fp32's, never further from them.
    assert (
        figures["max_abs_diff_probabilities"]
        <= figures["max_abs_diff_probabilities_at_fp32_temperature"] + 0.02
    )
    int8_gate = load_gate(added.path, added.manifest["files"], "int8")
    assert (
        int8_gate.summary["ood"]["threshold_ratio"]
        == load_gate(added.path, added.manifest["files"]).summary["ood"]["threshold_ratio"]
    )


def test_the_ablation_table_is_computed_from_published_runs_of_exactly_its_settings(smoke_run, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for slug in ("base", "other"):
        (runs / slug).symlink_to(smoke_run)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"config: {SMOKE}\nresults: {tmp_path / 'results'}\nrows:\n"
        "  - {slug: base, name: Smoke recipe, set: []}\n"
        "  - {slug: other, name: Another seed, set: [seed=1]}\n"
        "  - {slug: missing, name: Never run, set: [student.epochs=3]}\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- results:ablation:begin -->\n<!-- results:ablation:end -->\n")
    refused = run_cli("ablation", "--plan", str(plan), "--runs", str(runs), "--only", "other")
    assert refused.returncode == 2 and "other settings" in refused.stderr
    result = run_cli(
        "ablation", "--plan", str(plan), "--runs", str(runs), "--only", "base", "--doc", str(doc)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "results" / "base" / "report.json").read_text())
    table = doc.read_text()
    line = next(row for row in table.splitlines() if row.startswith("| Smoke recipe |"))
    assert f"{100 * report['student']['pooled']['accuracy']:.2f} [" in line
    confused = 0
    for path in (smoke_run / "fold_0" / "predictions.csv", smoke_run / "fold_1" / "predictions.csv"):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                predicted = max(
                    ("normal", "drusen", "cnv"), key=lambda c, row=row: float(row[f"student_{c}"])
                )
                confused += {row["label"], predicted} == {"cnv", "drusen"}
    assert f"| {confused} |" in line
    assert "| Never run | not run |" in table and "| Another seed | not run |" in table


def test_the_model_card_is_written_into_a_document_by_the_command_beside_it(smoke_run, oof_final, tmp_path):
    doc = tmp_path / "MODEL_CARD.md"
    doc.write_text(
        "# Card\n\n<!-- results:default_model:begin -->\nSTALE CARD\n<!-- results:default_model:end -->\n"
    )
    result = run_cli(*_final_args(smoke_run, oof_final, "--card-doc", str(doc)))
    assert result.returncode == 0, result.stderr[-2000:]
    card = json.loads((oof_final / "card.json").read_text())
    text = doc.read_text()
    assert "STALE CARD" not in text and text.startswith("# Card\n")
    assert card["recipe"]["code_sha256"] in text and card["models"]["student"]["sha256"][:16] in text
    assert "its rule flagged, out of fold:" in text and "in distribution" in text
