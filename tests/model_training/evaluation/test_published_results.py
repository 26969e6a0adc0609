"""The committed cross-validation evidence and the docs agree, figure for figure.

docs/RESULTS.md's tables are rendered from the committed report.json, and that report's figures are
recomputed here from the committed per-fold predictions: a figure typed or edited by hand, or a
report that no longer follows from its predictions, fails.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from model_training.evaluation.cv_report import build_report
from model_training.evaluation.publish import relative_image_path, rendered_section

REPO = Path(__file__).resolve().parents[3]
RESULTS = REPO / "model_training" / "configs" / "results" / "oct2017_sample"
DOC = REPO / "docs" / "RESULTS.md"


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((RESULTS / "report.json").read_text())


@pytest.fixture(scope="module")
def rebuilt(committed, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("rebuilt")
    for fold in committed["folds"]:
        (run / f"fold_{fold}").mkdir()
        shutil.copy(RESULTS / "predictions" / f"fold_{fold}.csv", run / f"fold_{fold}" / "predictions.csv")
    return build_report(run, committed["folds"], committed["class_names"])


def _assert_same_figures(rebuilt, committed, where: str) -> None:
    """Nested dicts and lists equal, numbers to 1e-12 (JSON round-trips floats exactly, but summation
    order may differ across numpy builds)."""
    if isinstance(committed, dict):
        assert sorted(rebuilt) == sorted(committed), where
        for key in committed:
            _assert_same_figures(rebuilt[key], committed[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(rebuilt) == len(committed), where
        for index, (mine, theirs) in enumerate(zip(rebuilt, committed, strict=True)):
            _assert_same_figures(mine, theirs, f"{where}[{index}]")
    elif isinstance(committed, float):
        assert rebuilt == pytest.approx(committed, abs=1e-12), where
    else:
        assert rebuilt == committed, where


def test_every_reported_figure_follows_from_the_committed_predictions(committed, rebuilt):
    assert rebuilt["models"] == committed["models"] and committed["models"][:2] == ["teacher", "student"]
    for model in committed["models"]:
        for part in ("folds", "mean", "std", "pooled", "bootstrap_95", "ece_floor"):
            _assert_same_figures(rebuilt[model][part], committed[model][part], f"{model}.{part}")
    assert rebuilt["mcnemar"] == committed["mcnemar"]


def test_results_doc_is_the_rendering_of_the_committed_report(committed):
    text = DOC.read_text()
    section = re.search(
        r"<!-- results:oct2017_sample:begin -->\n(.*)\n<!-- results:oct2017_sample:end -->", text, re.DOTALL
    )
    assert section, "docs/RESULTS.md lost its results:oct2017_sample markers"
    assert section.group(1) == rendered_section(committed, RESULTS, DOC).rstrip()


def test_committed_evidence_names_its_images_relatively():
    for path in sorted((RESULTS / "predictions").glob("fold_*.csv")):
        assert "/work/" not in path.read_text() and "/home/" not in path.read_text(), path
    assert relative_image_path(str(REPO / "data" / "x" / "a.jpeg"), REPO) == "data/x/a.jpeg"
    assert relative_image_path("/elsewhere/CNV/CNV-1-1.jpeg", REPO) == "CNV/CNV-1-1.jpeg"


def test_the_example_images_the_docs_name_exist():
    for document in (REPO / "README.md", REPO / "scripts" / "run-local.sh", REPO / "docs" / "API.md"):
        for path in re.findall(r"@(data/[\w./-]+\.jpeg)", document.read_text()):
            assert (REPO / path).is_file(), f"{document.name} names {path}, which does not exist"
