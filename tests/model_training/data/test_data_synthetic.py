"""The synthetic OCT generator: reproducible, balanced, realistic enough, fast."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdoct.errors import DataError, LabelError
from model_training.data.manifest import read_manifest
from model_training.data.synthetic import PatientParams, generate_dataset, synth_bscan, synth_bscan16


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def seed1_dataset(tmp_path_factory) -> Path:
    """The acceptance case: 12 patients x 4 B-scans, neh3, seed 1, full size."""
    return generate_dataset(tmp_path_factory.mktemp("seed1a"), 12, 4, "neh3", seed=1)


def test_acceptance_dataset_has_48_images_of_3_balanced_classes(seed1_dataset: Path) -> None:
    samples = read_manifest(seed1_dataset, classes="neh3")
    assert len(samples) == 48
    assert Counter(s.label for s in samples) == {"normal": 16, "drusen": 16, "cnv": 16}
    by_patient: dict[str, set[str]] = {}
    for sample in samples:
        by_patient.setdefault(sample.patient_id, set()).add(sample.label)
    assert sorted(by_patient) == [f"S{i:04d}" for i in range(1, 13)]
    assert all(len(labels) == 1 for labels in by_patient.values())  # one class per patient
    for sample in samples:
        path = Path(sample.path)
        assert path.parent.name == sample.label.upper() and path.suffix == ".png"
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (512, 496))
    # Paths inside the manifest are relative, so the folder can be moved as a whole.
    first_row = seed1_dataset.read_text().splitlines()[1]
    assert not first_row.startswith("/")


def test_same_seed_is_byte_identical_and_another_seed_differs(seed1_dataset: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "seed1b", 12, 4, "neh3", seed=1)
    other = generate_dataset(tmp_path / "seed2", 12, 4, "neh3", seed=2)
    reference = _tree_bytes(seed1_dataset.parent)
    assert _tree_bytes(again.parent) == reference
    other_bytes = _tree_bytes(other.parent)
    images = [name for name in reference if name.endswith(".png")]
    assert sum(reference[name] != other_bytes.get(name) for name in images) == len(images)


def test_ucsd4_is_balanced_across_patients(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path / "d", 8, 2, "ucsd4", seed=3, size=(96, 92))
    counts = Counter(s.label for s in read_manifest(manifest, classes="ucsd4"))
    assert counts == {"cnv": 4, "dme": 4, "drusen": 4, "normal": 4}


def test_16_bit_variant_matches_the_8_bit_image() -> None:
    params = PatientParams.sample(np.random.default_rng(7))
    eight = np.asarray(synth_bscan("drusen", np.random.default_rng(8), params), dtype=np.int32)
    image16 = synth_bscan16("drusen", np.random.default_rng(8), params)
    assert image16.mode == "I;16" and image16.size == (512, 496)
    sixteen = np.asarray(image16, dtype=np.int32)
    assert sixteen.max() > 255  # really uses the 16-bit range
    assert np.abs(sixteen / 257.0 - eight).max() <= 1.0


def test_image_looks_like_an_oct_b_scan() -> None:
    """Dark vitreous on top, a bright band (retina + RPE) in the middle rows, darker below."""
    params = PatientParams.sample(np.random.default_rng(0))
    params = PatientParams(**{**params.__dict__, "wedge": 0, "tilt": 0.0, "curvature": 0.0})
    pixels = np.asarray(synth_bscan("normal", np.random.default_rng(1), params), dtype=np.float32)
    row_means = pixels.mean(axis=1)
    brightest = int(row_means.argmax())
    assert 0.25 * 496 < brightest < 0.7 * 496
    assert row_means[:40].mean() < 0.4 * row_means[brightest]
    assert row_means[-40:].mean() < 0.6 * row_means[brightest]


def test_classes_differ_where_the_lesions_are() -> None:
    """With the same patient and random stream, disease changes the image, and DME adds dark cysts."""
    params = PatientParams.sample(np.random.default_rng(4))
    images = {
        label: np.asarray(synth_bscan(label, np.random.default_rng(5), params), dtype=np.float32)
        for label in ("normal", "drusen", "cnv", "dme")
    }
    for label in ("drusen", "cnv", "dme"):
        assert np.abs(images[label] - images["normal"]).mean() > 2.0, label


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="amd"):
        synth_bscan("amd", np.random.default_rng(0))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(tmp_path / "busy", 3, 1)
    with pytest.raises(DataError, match="at least 1 patient"):
        generate_dataset(tmp_path / "new", 0, 1)
