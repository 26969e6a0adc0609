"""End to end: `cv` on the smoke config, then export, evaluate and bench on its outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from training_cli import SMOKE, run_cli

from kdoct.bundle import load_bundle
from kdoct.errors import BundleError
from kdoct.golden import check_golden
from kdoct.preprocess import preprocess_batch
from kdoct.probabilities import softmax
from model_training.config import load_config
from model_training.data.folds import read_folds
from model_training.evaluation.classification_metrics import compute_metrics, read_predictions
from model_training.runs.run_data import prepare_folds
from model_training.train.distill import train_student
from model_training.train.distributed import init_distributed

CLASSES = ("normal", "drusen", "cnv")


def test_cv_writes_everything(smoke_run):
    for name in ("folds.csv", "manifest.csv", "report.json", "report.md"):
        assert (smoke_run / name).is_file(), name
    for fold in (0, 1):
        assert (smoke_run / f"fold_{fold}" / "predictions.csv").is_file()
        for role in ("teacher", "student"):
            bundle = load_bundle(smoke_run / f"fold_{fold}" / role)
            assert bundle.manifest["provenance"]["fold"] == fold
            calibration = bundle.manifest["calibration"]
            assert calibration["fitted_on"] == "validation" and calibration["temperature"] > 0
            assert {"ece_before", "ece_after"} <= set(calibration)
    for model in ("teacher", "student"):
        assert (smoke_run / f"confusion_{model}.png").stat().st_size > 1000
        assert (smoke_run / f"roc_{model}.png").stat().st_size > 1000
    report_md = (smoke_run / "report.md").read_text()
    assert "| Teacher |" in report_md and "±" in report_md


def test_report_figures_are_recomputed_from_predictions(smoke_run):
    report = json.loads((smoke_run / "report.json").read_text())
    for model in ("teacher", "student"):
        accuracies = []
        for entry in report[model]["folds"]:
            with open(smoke_run / f"fold_{entry['fold']}" / "predictions.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            # Independent recomputation: argmax of the written probabilities against the written label.
            correct = [
                max(CLASSES, key=lambda c, row=row: float(row[f"{model}_{c}"])) == row["label"]
                for row in rows
            ]
            assert entry["accuracy"] == pytest.approx(np.mean(correct), abs=1e-12)
            accuracies.append(np.mean(correct))
            metrics = compute_metrics(*_labels_probs(smoke_run, entry["fold"], model))
            for key in ("macro_f1", "macro_sensitivity", "macro_specificity", "auc", "ece"):
                assert entry[key] == pytest.approx(metrics[key], abs=1e-12)
            assert set(entry["per_class"]) == set(CLASSES)
        assert report[model]["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
        assert report[model]["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))


def _labels_probs(run: Path, fold: int, model: str):
    saved = read_predictions(run / f"fold_{fold}" / "predictions.csv", CLASSES)
    return saved["labels"], saved["models"][model], CLASSES


def test_teacher_and_student_were_tested_on_the_same_held_out_patients(smoke_run):
    table = read_folds(smoke_run / "folds.csv")
    for fold in range(table.k):
        split = table.split(fold)
        with open(smoke_run / f"fold_{fold}" / "predictions.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        tested = {row["patient_id"] for row in rows}
        assert tested == {s.patient_id for s in split["test"]}
        assert all(row["teacher_normal"] and row["student_normal"] for row in rows)  # both, every row
        assert not tested & {s.patient_id for s in split["train"] + split["val"]}
        for role in ("teacher", "student"):
            provenance = load_bundle(smoke_run / f"fold_{fold}" / role).manifest["provenance"]
            assert provenance["fold"] == fold and len(provenance["dataset_fingerprint"]) == 64


def test_exported_bundle_onnx_and_pytorch_agree_on_real_scans(smoke_run, sample_jpegs):
    images = []
    for folder in ("NORMAL", "DRUSEN", "CNV", "DME"):
        with Image.open(sample_jpegs[folder][0]) as image:
            image.load()
            images.append(image)
    for role in ("teacher", "student"):
        bundle = load_bundle(smoke_run / "fold_0" / role)
        batch = preprocess_batch(images, bundle.preprocess)
        with torch.inference_mode():
            torch_probs = softmax(bundle.model()(torch.from_numpy(batch)).numpy())
        session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
        onnx_probs = softmax(session.run(None, {session.get_inputs()[0].name: batch})[0])
        assert np.abs(torch_probs - onnx_probs).max() <= 1e-4
        assert bundle.manifest["onnx_check"]["max_abs_diff_probabilities"] <= 1e-4
        check_golden(bundle.golden_dir, bundle.preprocess, lambda b, s=session: s.run(None, {"input": b})[0])


def test_export_cli_rebuilds_a_bundle_from_the_checkpoint(smoke_run, tmp_path):
    checkpoint = smoke_run / "fold_1" / "work" / "student" / "final.pt"
    result = run_cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle"))
    assert result.returncode == 0, result.stderr[-2000:]
    exported = load_bundle(tmp_path / "bundle")
    original = load_bundle(smoke_run / "fold_1" / "student")
    assert exported.manifest["files"]["model.safetensors"] == original.manifest["files"]["model.safetensors"]
    assert exported.temperature == original.temperature
    again = run_cli("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle"))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_evaluate_cli_on_real_scans(smoke_run, sample_dir, tmp_path):
    manifest = tmp_path / "manifest.csv"
    with open(sample_dir / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] != "DME"][::40]
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows([[str(sample_dir / r["path"]), r["label"], r["patient_id"]] for r in rows])
    out = tmp_path / "eval"
    bundle = str(smoke_run / "fold_0" / "student")
    result = run_cli("evaluate", "--bundle", bundle, "--manifest", str(manifest), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    saved = read_predictions(out / "predictions.csv", CLASSES)
    assert metrics["n"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(
        float((saved["models"]["model"].argmax(1) == saved["labels"]).mean())
    )
    assert "accuracy" in result.stdout
    bad = run_cli("evaluate", "--bundle", str(tmp_path / "nowhere"), "--manifest", str(manifest))
    assert bad.returncode == 2 and "nowhere" in bad.stderr


def test_bench_cli_writes_markdown_and_json(smoke_run, tmp_path):
    bundles = [str(smoke_run / "fold_0" / role) for role in ("teacher", "student")]
    result = run_cli("bench", "--bundles", *bundles, "--out", str(tmp_path / "bench"), "--runs", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["arch"] for r in report["results"]] == ["test_convnext", "test_efficientnet"]
    for row in report["results"]:
        assert row["params_m"] > 0 and row["gflops"] > 0
        for batch in ("batch_1", "batch_8"):
            assert (
                row["latency_ms"][batch]["torch_cpu"] > 0 and row["latency_ms"][batch]["onnxruntime_cpu"] > 0
            )
    assert "| smoke-teacher-fold0 |" in (tmp_path / "bench.md").read_text()


def test_rerunning_cv_reuses_finished_bundles(smoke_run):
    before = (smoke_run / "fold_0" / "teacher" / "bundle.json").read_bytes()
    result = run_cli("cv", "--config", str(SMOKE), "--out", str(smoke_run), "--set", "run_no_kd=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (smoke_run / "fold_0" / "teacher" / "bundle.json").read_bytes() == before
    # Each invocation is on record with what it trained: the first everything, the rerun nothing.
    invocations = json.loads((smoke_run / "report.json").read_text())["invocations"]
    assert len(invocations[0]["trained"]) == 6 and invocations[-1]["trained"] == []
    assert all(i["seconds"] > 0 for i in invocations)


def test_student_refuses_a_teacher_from_another_fold(smoke_run):
    config = load_config(SMOKE)
    split = read_folds(smoke_run / "folds.csv").split(0)
    with pytest.raises(BundleError, match="fold 1"):
        train_student(
            config, split, smoke_run, 0, init_distributed("cpu"), teacher_dir=smoke_run / "fold_1" / "teacher"
        )


def test_bad_config_is_refused_before_any_work(tmp_path):
    result = run_cli(
        "cv", "--config", str(SMOKE), "--out", str(tmp_path / "x"), "--set", "teacher.mixup_alpha=0.2"
    )
    assert result.returncode == 2 and "mixup" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_given_folds_file_is_adopted_with_paths_that_still_resolve(smoke_run, tmp_path):
    config = load_config(SMOKE, [f"data.folds={smoke_run / 'folds.csv'}"])
    table = prepare_folds(config, tmp_path / "elsewhere", init_distributed("cpu"))
    assert all(Path(sample.path).is_file() for sample in table.samples)
    original = read_folds(smoke_run / "folds.csv")
    assert [table.roles(f) for f in range(2)] == [original.roles(f) for f in range(2)]


def test_report_has_intervals_mcnemar_and_the_training_record(smoke_run):
    report = json.loads((smoke_run / "report.json").read_text())
    assert report["models"] == ["teacher", "student", "student_no_kd"]
    labels, patients, predicted = [], [], {}
    for fold in (0, 1):
        saved = read_predictions(smoke_run / f"fold_{fold}" / "predictions.csv", CLASSES)
        labels.append(saved["labels"])
        patients += [row["patient_id"] for row in saved["rows"]]
        for model, probabilities in saved["models"].items():
            predicted.setdefault(model, []).append(probabilities.argmax(axis=1))
    labels = np.concatenate(labels)
    predicted = {model: np.concatenate(parts) for model, parts in predicted.items()}
    for model in report["models"]:
        pooled = report[model]["pooled"]["accuracy"]
        assert pooled == pytest.approx(float(np.mean(predicted[model] == labels)))
        interval = report[model]["bootstrap_95"]["accuracy"]
        assert interval["low"] <= pooled <= interval["high"]
        assert interval["clusters"] == len(set(patients))
        training = report[model]["training"]
        assert [f["fold"] for f in training["folds"]] == [0, 1]
        swa = sum(f["selected_weights"] == "swa" for f in training["folds"])
        assert training["swa_folds"] == swa
        floor = report[model]["ece_floor"]
        assert len(floor["folds"]) == 2 and floor["mean"] == pytest.approx(np.mean(floor["folds"]))
        assert 0 < floor["pooled"] < 1
    # The smoke teacher averages its last epoch (SWA from epoch 2 of 3); the students have no SWA.
    assert report["teacher"]["training"]["swa_folds"] == 2
    assert report["student"]["training"]["swa_folds"] == 0
    test = report["mcnemar"]["teacher_vs_student"]
    teacher_right, student_right = predicted["teacher"] == labels, predicted["student"] == labels
    assert test["a_only_correct"] == int(np.sum(teacher_right & ~student_right))
    assert test["b_only_correct"] == int(np.sum(~teacher_right & student_right))
    assert 0 < test["p_value"] <= 1 and "student_vs_student_no_kd" in report["mcnemar"]
    assert "McNemar" in (smoke_run / "report.md").read_text()


def test_epoch_logs_name_their_fold(smoke_run):
    for fold in (0, 1):
        for role in ("teacher", "student", "student_no_kd"):
            lines = (smoke_run / f"fold_{fold}" / "work" / role / "log.jsonl").read_text().splitlines()
            assert lines and all(json.loads(line)["fold"] == fold for line in lines)


def test_results_command_copies_the_evidence_and_writes_the_doc(smoke_run, tmp_path):
    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    doc.write_text(
        "# Results\n\nprose\n\n<!-- results:smoke:begin -->\nstale\n<!-- results:smoke:end -->\nafter\n"
    )
    to = tmp_path / "results" / "smoke"
    result = run_cli("results", "--run", str(smoke_run), "--to", str(to), "--doc", str(doc))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((to / "report.json").read_text())
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# Results\n\nprose") and text.endswith("after\n")
    accuracy = 100 * report["student"]["mean"]["accuracy"]
    assert f"| Student (KD) | {accuracy:.2f} ± " in text
    assert "](../results/smoke/confusion_student.png)" in text
    assert "McNemar" in text and "bootstrap 95 %" in text
    for fold in (0, 1):
        with open(to / "predictions" / f"fold_{fold}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and not any(row["path"].startswith("/") for row in rows)
    epochs = [json.loads(line) for line in (to / "epochs.jsonl").read_text().splitlines()]
    assert {(e["fold"], e["role"]) for e in epochs} == {
        (f, r) for f in (0, 1) for r in ("teacher", "student", "student_no_kd")
    }
    # Without its markers the doc is refused, not appended to.
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    refused = run_cli("results", "--run", str(smoke_run), "--to", str(to), "--doc", str(bare))
    assert refused.returncode == 2 and "results:smoke:begin" in refused.stderr
    assert bare.read_text() == "no markers\n"
