"""Patient-level folds: coverage, stratification, 64/16/20, leakage refused, deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kdoct.errors import DataError, LeakageError
from model_training.data.folds import check_no_leakage, make_folds, read_folds, write_folds
from model_training.data.manifest import Sample
from model_training.data.readers import index_kermany


@pytest.fixture(scope="module")
def real_samples(sample_dir: Path) -> list[Sample]:
    return index_kermany(sample_dir, "ucsd4")


@pytest.fixture(scope="module")
def real_folds(real_samples: list[Sample], tmp_path_factory) -> Path:
    roles = make_folds(real_samples, k=5, seed=43)
    return write_folds(real_samples, roles, tmp_path_factory.mktemp("folds") / "folds.csv")


def _share(samples: list[Sample]) -> dict[str, float]:
    counts = Counter(s.label for s in samples)
    return {label: n / len(samples) for label, n in counts.items()}


def test_every_patient_is_tested_exactly_once(real_folds: Path, real_samples: list[Sample]) -> None:
    table = read_folds(real_folds)
    assert table.k == 5 and len(table.samples) == len(real_samples)
    tested: Counter[str] = Counter()
    for fold in range(table.k):
        tested.update({s.patient_id for s in table.split(fold)["test"]})
    assert set(tested) == {s.patient_id for s in real_samples}
    assert set(tested.values()) == {1}


def test_no_patient_on_two_sides_of_any_fold(real_folds: Path) -> None:
    table = read_folds(real_folds)
    for fold in range(table.k):
        parts = {role: {s.patient_id for s in samples} for role, samples in table.split(fold).items()}
        assert not parts["train"] & parts["val"]
        assert not parts["train"] & parts["test"]
        assert not parts["val"] & parts["test"]


def test_class_proportions_per_fold_follow_the_whole(real_folds: Path, real_samples: list[Sample]) -> None:
    whole = _share(real_samples)
    table = read_folds(real_folds)
    for fold in range(table.k):
        for role, part in table.split(fold).items():
            for label, share in _share(part).items():
                tolerance = 0.03 if role != "val" else 0.05
                assert abs(share - whole[label]) <= tolerance, (fold, role, label)


def test_split_is_roughly_64_16_20(real_folds: Path) -> None:
    table = read_folds(real_folds)
    total = len(table.samples)
    for fold in range(table.k):
        sizes = {role: len(part) / total for role, part in table.split(fold).items()}
        assert sizes["train"] == pytest.approx(0.64, abs=0.03)
        assert sizes["val"] == pytest.approx(0.16, abs=0.03)
        assert sizes["test"] == pytest.approx(0.20, abs=0.03)


def test_deterministic_for_a_seed(real_samples: list[Sample]) -> None:
    first = make_folds(real_samples, seed=43)
    assert make_folds(real_samples, seed=43) == first
    assert make_folds(real_samples, seed=44) != first


def test_mixed_labels_within_a_patient_keep_the_patient_whole() -> None:
    """NEH: a diseased patient's volume holds normal B-scans; the patient still moves as one."""
    samples = [
        Sample(f"/x/{p}-{i}.png", ("cnv", "normal", "drusen")[(p + i) % 3 if p % 2 else p % 3], f"P{p}")
        for p in range(30)
        for i in range(4)
    ]
    roles = make_folds(samples, k=5, seed=1)
    for fold in range(5):
        check_no_leakage(samples, [r[fold] for r in roles], fold=fold)


def test_round_trip_keeps_samples_and_roles(real_folds: Path) -> None:
    table = read_folds(real_folds)
    again = write_folds(table.samples, table.role_table, real_folds.parent / "again.csv")
    assert again.read_bytes() == real_folds.read_bytes()
    header = real_folds.read_text().splitlines()[0]
    assert header == "path,label,patient_id,volume_id,fold_0,fold_1,fold_2,fold_3,fold_4"
    assert table.roles(2) == [row[2] for row in table.role_table]
    with pytest.raises(DataError, match="fold 5 does not exist"):
        table.split(5)


def _write_table(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    lines = ["path,label,patient_id,volume_id,fold_0,fold_1"]
    lines += [f"{name},normal,{patient},,{r0},{r1}" for name, patient, r0, r1 in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hand_made_leaking_table_is_refused(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "leak.csv",
        [
            ("a.png", "P1", "test", "train"),
            ("b.png", "P1", "train", "test"),
            ("c.png", "P2", "train", "test"),
        ],
    )
    with pytest.raises(LeakageError, match=r"fold 0: patient P1 in test \(1 images\) and train \(1 images\)"):
        read_folds(path)


def test_patient_never_tested_is_refused(tmp_path: Path) -> None:
    path = _write_table(
        tmp_path / "untested.csv",
        [("a.png", "P1", "test", "train"), ("b.png", "P2", "train", "test"), ("c.png", "P3", "val", "train")],
    )
    with pytest.raises(LeakageError, match="patient P3 in test folds none"):
        read_folds(path)


def test_check_no_leakage_names_the_patient() -> None:
    samples = [Sample("a", "cnv", "P7"), Sample("b", "cnv", "P7"), Sample("c", "cnv", "P8")]
    check_no_leakage(samples, ["val", "val", "train"])
    with pytest.raises(LeakageError, match="patient P7 in train .* and val"):
        check_no_leakage(samples, ["val", "train", "test"])
    with pytest.raises(DataError, match="unknown role"):
        check_no_leakage(samples, ["val", "val", "holdout"])


def test_too_few_patients_is_a_clear_error() -> None:
    samples = [Sample(f"{p}.png", "cnv", str(p)) for p in range(4)]
    with pytest.raises(DataError, match="4 patients are too few for 5 folds"):
        make_folds(samples, k=5)
