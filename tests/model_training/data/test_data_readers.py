"""Manifest I/O and the dataset readers, on the real OCT2017 sample and on small trees built here."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from kdoct.errors import DataError
from model_training.data.manifest import (
    MANIFEST_COLUMNS,
    Sample,
    manifest_fingerprint,
    read_manifest,
    write_manifest,
)
from model_training.data.readers import index_kermany, index_manifest, index_neh
from model_training.data.synthetic import synth_bscan


def _save_scan(path: Path, label: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    synth_bscan(label, np.random.default_rng(seed), size=(64, 62)).save(path)


def _sample_manifest_rows(sample_dir: Path) -> list[dict[str, str]]:
    with (sample_dir / "manifest.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- the real sample, Kermany layout ------------------------------------------------------------


def test_kermany_neh3_keeps_exactly_cnv_drusen_normal(sample_dir: Path) -> None:
    samples = index_kermany(sample_dir, "neh3")
    assert len(samples) == 513
    assert {s.label for s in samples} == {"normal", "drusen", "cnv"}
    assert all(s.patient_id.isdigit() for s in samples)
    expected = {
        (str(sample_dir / row["path"]), row["label"].lower(), row["patient_id"])
        for row in _sample_manifest_rows(sample_dir)
        if row["label"] != "DME"
    }
    assert {(s.path, s.label, s.patient_id) for s in samples} == expected


def test_kermany_ucsd4_keeps_all_683(sample_dir: Path) -> None:
    samples = index_kermany(sample_dir, "ucsd4")
    assert len(samples) == 683
    assert sorted({s.label for s in samples}) == ["cnv", "dme", "drusen", "normal"]
    assert len({s.patient_id for s in samples}) == 416


def test_index_manifest_on_the_sample_agrees_with_kermany(sample_dir: Path) -> None:
    assert index_manifest(sample_dir / "manifest.csv", "neh3") == index_kermany(sample_dir, "neh3")


# -- manifest files -----------------------------------------------------------------------------


def test_manifest_round_trip_relative_inside_absolute_outside(tmp_path: Path, sample_dir: Path) -> None:
    inside = tmp_path / "imgs" / "a.png"
    outside = sample_dir / "CNV" / "CNV-103044-1.jpeg"
    samples = [Sample(str(inside), "cnv", "7", "7/OD"), Sample(str(outside), "normal", "8")]
    out = write_manifest(samples, tmp_path / "manifest.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(MANIFEST_COLUMNS)
    assert lines[1] == "imgs/a.png,cnv,7,7/OD"
    assert lines[2].startswith(str(outside))
    assert read_manifest(out) == [
        Sample(inside.as_posix(), "cnv", "7", "7/OD"),
        Sample(outside.as_posix(), "normal", "8", ""),
    ]
    assert manifest_fingerprint(out) == hashlib.sha256(out.read_bytes()).hexdigest()


def test_read_manifest_parses_labels_and_rejects_other_classes(sample_dir: Path) -> None:
    samples = read_manifest(sample_dir / "manifest.csv", classes="ucsd4")
    assert {s.label for s in samples} == {"cnv", "dme", "drusen", "normal"}
    assert all(Path(s.path).is_absolute() for s in samples)
    with pytest.raises(DataError, match="DME"):
        read_manifest(sample_dir / "manifest.csv", classes="neh3")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("path,label\na.png,cnv\n", "missing column.*patient_id"),
        ("path,label,patient_id\n", "no rows"),
        ("path,label,patient_id\na.png,,3\n", "line.* 2"),
    ],
)
def test_malformed_manifest_is_a_data_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest(path)


# -- Kermany layout errors ----------------------------------------------------------------------


def test_kermany_reports_every_problem_file_by_name(tmp_path: Path) -> None:
    _save_scan(tmp_path / "CNV" / "CNV-11-1.png", "cnv", 1)
    _save_scan(tmp_path / "NORMAL" / "NORMAL-12-1.png", "normal", 2)
    (tmp_path / "CNV" / "CNV-11-2.png").write_bytes((tmp_path / "CNV" / "CNV-11-1.png").read_bytes()[:200])
    _save_scan(tmp_path / "NORMAL" / "photo.png", "normal", 3)  # no patient in the name
    _save_scan(tmp_path / "stray-1-1.png", "normal", 4)  # outside any class folder
    _save_scan(tmp_path / "AMD" / "AMD-13-1.png", "drusen", 5)  # unknown class folder
    (tmp_path / "README.md").write_text("documentation is ignored")
    with pytest.raises(DataError) as caught:
        index_kermany(tmp_path, "neh3")
    message = str(caught.value)
    for name in ("CNV-11-2.png", "photo.png", "stray-1-1.png", "AMD"):
        assert name in message
    assert "4 problem file(s)" in message
    assert "CNV-11-1.png" not in message and "README" not in message


def test_kermany_dme_skipped_for_neh3_but_folder_must_match_name(tmp_path: Path) -> None:
    _save_scan(tmp_path / "DME" / "DME-1-1.png", "dme", 1)
    _save_scan(tmp_path / "CNV" / "CNV-2-1.png", "cnv", 2)
    assert [s.label for s in index_kermany(tmp_path, "neh3")] == ["cnv"]
    _save_scan(tmp_path / "CNV" / "DRUSEN-3-1.png", "drusen", 3)
    with pytest.raises(DataError, match="DRUSEN-3-1.png.*folder says CNV"):
        index_kermany(tmp_path, "neh3")


def test_kermany_without_class_folders_says_where_to_point(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="train/ or test/"):
        index_kermany(tmp_path, "ucsd4")


def test_manifest_layout_reports_missing_and_unknown(tmp_path: Path) -> None:
    _save_scan(tmp_path / "a.png", "cnv", 1)
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient_id\na.png,CNV,1\ngone.png,normal,2\nb.png,amd,3\nc.png,DME,4\n"
    )
    with pytest.raises(DataError) as caught:
        index_manifest(tmp_path, "neh3")
    message = str(caught.value)
    assert "gone.png: file not found" in message and "'amd'" in message
    assert "c.png" not in message  # DME is a known class outside neh3: skipped, not an error


# -- NEH layout ---------------------------------------------------------------------------------

# (Class folder, patient number, eye, file, per-B-scan Label)
_NEH_SCANS = [
    ("NORMAL", 1, "OD", "001.png", "NORMAL"),
    ("NORMAL", 1, "OD", "002.png", "NORMAL"),
    ("DRUSEN", 1, "OS", "001.png", "DRUSEN"),
    ("DRUSEN", 1, "OS", "002.png", "NORMAL"),  # a diseased volume holds normal B-scans
    ("CNV", 1, "OD", "001.png", "CNV"),
    ("CNV", 2, "OS", "001.png", "CNV"),
    ("CNV", 2, "OS", "002.png", "DRUSEN"),
]


def _build_neh(root: Path) -> Path:
    image_dir = root / "NEH_UT_2021RetinalOCTDataset"
    rows = []
    for seed, (folder, patient, eye, name, label) in enumerate(_NEH_SCANS):
        _save_scan(image_dir / folder / str(patient) / eye / name, label.lower(), seed)
        rows.append([f"{folder}/{patient}/{eye}/{name}", label, folder, str(patient), eye])
    rows[0][0] = rows[0][0].lower()  # the release was made on Windows: letter case may differ
    rows.append(list(rows[1]))  # a repeated row
    with (root / "data_information.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([" directory", "LABEL", "Class ", "Patient  ID", "Eye"])  # sloppy headers
        writer.writerows(rows)
    return image_dir


def test_neh_layout_uses_per_bscan_labels_and_class_scoped_patients(tmp_path: Path) -> None:
    image_dir = _build_neh(tmp_path)
    samples = index_neh(tmp_path, "neh3")
    assert len(samples) == len(_NEH_SCANS)
    got = {
        (Path(s.path).relative_to(image_dir).as_posix(), s.label, s.patient_id, s.volume_id) for s in samples
    }
    expected = {
        (f"{c}/{p}/{e}/{n}", label.lower(), f"{c}-{p}", f"{c}/{p}/{e}") for c, p, e, n, label in _NEH_SCANS
    }
    assert got == expected
    # Patient numbers restart in every class folder: NORMAL 1, DRUSEN 1 and CNV 1 are three patients.
    assert len({s.patient_id for s in samples}) == 4


def test_neh_label_equals_class_filter_drops_what_the_reference_code_drops(tmp_path: Path, caplog) -> None:
    image_dir = _build_neh(tmp_path)
    with caplog.at_level("INFO", logger="model_training.data.readers"):
        samples = index_neh(tmp_path, "neh3", label_equals_class=True)
    kept = {Path(s.path).relative_to(image_dir).as_posix() for s in samples}
    expected = {f"{c}/{p}/{e}/{n}" for c, p, e, n, label in _NEH_SCANS if label == c}
    assert kept == expected and len(kept) == len(_NEH_SCANS) - 2
    # DRUSEN-1 and CNV-2 each lose one B-scan and keep the others: no patient disappears.
    assert "dropped 2 B-scans of 2 patients (0 of them entirely); kept 5 B-scans of 4 patients" in caplog.text


def test_neh_root_may_be_the_image_folder(tmp_path: Path) -> None:
    image_dir = _build_neh(tmp_path)
    assert len(index_neh(image_dir, "neh3")) == len(_NEH_SCANS)


def test_neh_reports_unlisted_missing_unlabeled_and_unreadable(tmp_path: Path) -> None:
    image_dir = _build_neh(tmp_path)
    _save_scan(image_dir / "CNV" / "3" / "OD" / "009.png", "cnv", 9)  # on disk, not in the CSV
    (image_dir / "CNV" / "2" / "OS" / "002.png").write_bytes(b"not an image")
    with (tmp_path / "data_information.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows(
            [["CNV/4/OD/001.png", "CNV", "CNV", "4", "OD"], ["CNV/1/OD/001.png", "", "CNV", "1", "OD"]]
        )
    with pytest.raises(DataError) as caught:
        index_neh(tmp_path, "neh3")
    message = str(caught.value)
    assert "009.png: image not listed in data_information.csv" in message
    assert "CNV/4/OD/001.png: listed in data_information.csv" in message
    assert "CNV/1/OD/001.png: unlabeled" in message
    assert "002.png: unreadable image" in message


def test_neh_missing_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "data_information.csv").write_text("Directory,Label,Class\nNORMAL/1/a.png,NORMAL,NORMAL\n")
    with pytest.raises(DataError, match="missing column.*Patient ID"):
        index_neh(tmp_path, "neh3")


def test_neh_without_csv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_information.csv"):
        index_neh(tmp_path, "neh3")
