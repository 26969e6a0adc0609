"""The recipe's ablation: cross-validation runs of one config with settings changed, side by side, from
their published evidence (docs/RESULTS.md).

A plan (YAML) names the config, where the evidence lives and one row per variant: a slug, a name and
the `--set` overrides that make it. Each row's run is a plain `cv` run (DIR/<slug>); publishing copies
its report and predictions into RESULTS/<slug>/ after checking, on a fold's bundle, that the run was
trained with exactly the row's settings. The table is computed from the published files only, so it
can be regenerated anywhere from the repository.
"""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdoct.bundle import load_bundle
from kdoct.errors import ConfigError, DataError
from model_training.config import config_to_dict, load_config
from model_training.evaluation.publish import publish_results
from model_training.layout import bundle_dir

__all__ = ["AblationRow", "ablation_table", "publish_row", "read_plan"]

MODELS = ("student", "teacher")
# The confusion issue 27 asks to halve: CNV called drusen, and drusen called CNV.
CONFUSED = (("cnv", "drusen"), ("drusen", "cnv"))


@dataclass(frozen=True)
class AblationRow:
    slug: str
    name: str
    overrides: tuple[str, ...]
    results: Path | None = None  # where its evidence lives, when not RESULTS/<slug> (the shipped recipe's)


@dataclass(frozen=True)
class AblationPlan:
    config: Path
    results: Path
    rows: tuple[AblationRow, ...]


def read_plan(path: Path) -> AblationPlan:
    try:
        data = yaml.safe_load(Path(path).read_text())
        rows = tuple(
            AblationRow(
                r["slug"], r["name"], tuple(r.get("set", [])), Path(r["results"]) if "results" in r else None
            )
            for r in data["rows"]
        )
        plan = AblationPlan(Path(data["config"]), Path(data["results"]), rows)
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not an ablation plan (config, results, rows of slug/name/set): {exc}"
        ) from None
    if len({row.slug for row in rows}) != len(rows):
        raise ConfigError(f"{path}: two rows share a slug")
    return plan


def cv_command(plan: AblationPlan, row: AblationRow, runs: Path) -> str:
    sets = " ".join(f"--set {shlex.quote(item)}" for item in row.overrides)
    return f"python -m model_training cv --config {plan.config} --out {runs / row.slug} {sets}".rstrip()


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for key in ("source_path", "run_no_kd", "folds_to_run"):
        data.pop(key, None)
    return json.loads(json.dumps(data))


def publish_row(plan: AblationPlan, row: AblationRow, run_dir: Path) -> list[Path]:
    """Copy a finished run's evidence into RESULTS/<slug>/, refused unless its fold 0 teacher and student
    were trained with the config the row describes."""
    expected = _comparable(config_to_dict(load_config(plan.config, list(row.overrides))))
    for role in ("teacher", "student"):
        recorded = _comparable(load_bundle(bundle_dir(run_dir, 0, role)).manifest["provenance"]["config"])
        if role == "teacher":
            # A teacher does not depend on the student's settings: a student-only variant reuses them.
            recorded["student"] = expected["student"]
        if recorded != expected:
            differing = sorted(key for key in expected if recorded.get(key) != expected.get(key))
            raise DataError(
                f"{run_dir}: its fold-0 {role} was trained with other settings ({differing}) than row "
                f"{row.slug}"
            )
    target = _results_dir(plan, row)
    written = publish_results(run_dir, target)
    (target / "row.json").write_text(
        json.dumps({"slug": row.slug, "name": row.name, "set": list(row.overrides)}) + "\n"
    )
    return written


def _results_dir(plan: AblationPlan, row: AblationRow) -> Path:
    return row.results or plan.results / row.slug


def _confusions(results: Path, model: str, class_names: list[str]) -> int:
    """How many pooled test images the model put in the wrong one of CNV / drusen."""
    count = 0
    for path in sorted((results / "predictions").glob("fold_*.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                predicted = max(class_names, key=lambda c, row=row: float(row[f"{model}_{c}"]))
                count += (row["label"], predicted) in CONFUSED
    return count


def _minutes(results: Path) -> float:
    """Training time of the teacher and student over every fold: the sum of their epochs' seconds
    (epochs.jsonl), the same measure for a run that reused another's teachers."""
    lines = (results / "epochs.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return sum(r["seconds"] for r in records if r["role"] in MODELS) / 60


def _cell(report: dict[str, Any], model: str, key: str) -> str:
    value, interval = report[model]["pooled"][key], report[model]["bootstrap_95"][key]
    return f"{100 * value:.2f} [{100 * interval['low']:.2f}, {100 * interval['high']:.2f}]"


def ablation_table(plan: AblationPlan, runs: Path) -> str:
    """The markdown table of every published row (rows not yet published are listed as such)."""
    header = (
        "| variant | student accuracy [95 % CI] | teacher accuracy [95 % CI] | student ECE | "
        "student CNV / drusen confusions | training minutes | command |\n|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in plan.rows:
        results = _results_dir(plan, row)
        command = f"`{cv_command(plan, row, runs)}`"
        if not (results / "report.json").is_file():
            lines.append(f"| {row.name} | not run | | | | | {command} |")
            continue
        report = json.loads((results / "report.json").read_text())
        confusions = _confusions(results, "student", report["class_names"])
        lines.append(
            f"| {row.name} | {_cell(report, 'student', 'accuracy')} | "
            f"{_cell(report, 'teacher', 'accuracy')} | {_cell(report, 'student', 'ece')} | {confusions} | "
            f"{_minutes(results):.1f} | {command} |"
        )
    return "\n".join(lines)
