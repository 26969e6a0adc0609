"""The safety gate in the service: what it answers, how volumes use it, what is recorded and counted,
and that it can be turned off (a random-weight student with a gate fitted on real B-scans)."""

import re
import uuid

import numpy as np
import pytest
import skimage.data
from fastapi.testclient import TestClient
from PIL import Image

from kdoct.errors import BundleError
from kdoct_testing.bundles import build_test_bundle, gray_images
from kdoct_testing.uploads import encode, jpeg_gray, make_dicom
from service.app import create_app

SIZE = (512, 496)


def post(client, data: bytes, name: str = "scan.png", **params):
    response = client.post(
        "/classify", files={"file": (name, data, "application/octet-stream")}, params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


def blank() -> bytes:
    return encode(Image.new("L", SIZE, 0), "PNG")


def noise() -> bytes:
    rng = np.random.default_rng(5)
    return encode(Image.fromarray(rng.integers(0, 256, SIZE[::-1], dtype=np.uint8)), "PNG")


def photograph() -> bytes:
    return encode(Image.fromarray(skimage.data.astronaut()), "JPEG", quality=90)


@pytest.fixture
def unseen_scans(sample_jpegs):
    """Three-class B-scans the gate was not fitted on (its fit uses the first 36 of each class)."""
    return [path for c in ("CNV", "DRUSEN", "NORMAL") for path in sample_jpegs[c][40:50]]


@pytest.mark.parametrize(
    ("make", "reason"),
    [(blank, "quality:blank"), (noise, "quality:noise"), (photograph, "quality:colour")],
)
def test_what_is_not_a_b_scan_is_ungradable_referred_and_still_has_probabilities(client, make, reason):
    body = post(client, make(), second_opinion="never")
    assert body["gradable"] is False and body["reason"] == reason and body["refer"] is True
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["label"] in body["probabilities"] and isinstance(body["ood_score"], float)


def test_real_b_scans_are_gradable(client, unseen_scans):
    answers = [
        post(client, path.read_bytes(), name=path.name, second_opinion="never") for path in unseen_scans
    ]
    gradable = [a["gradable"] for a in answers]
    assert np.mean(gradable) >= 0.8, [a["reason"] for a in answers]
    assert all(a["reason"] is None for a in answers if a["gradable"])
    assert all(a["reason"] for a in answers if not a["gradable"])


def test_an_ungradable_frame_never_decides_a_volume(client, unseen_scans):
    scans = [jpeg_gray(path) for path in unseen_scans[:12]]
    scans = [scan for scan in scans if scan.shape == scans[0].shape][:2]
    frames = [scans[0], np.zeros_like(scans[0]), scans[1]]
    body = post(client, make_dicom(frames), name="volume.dcm", second_opinion="never")
    per_frame = body["frames"]
    assert per_frame[1]["gradable"] is False and per_frame[1]["reason"] == "quality:blank"
    assert per_frame[1]["refer"] is True
    deciding = [frame for frame in per_frame if frame["gradable"]]
    assert deciding, per_frame  # the two B-scans, unless both are out of distribution
    assert body["gradable"] is True and body["reason"] is None
    # The volume's probabilities are the renormalised per-class maxima over the deciding frames only.
    maxima = {name: max(frame["probabilities"][name] for frame in deciding) for name in body["probabilities"]}
    total = sum(maxima.values())
    for name, value in maxima.items():
        assert body["probabilities"][name] == pytest.approx(value / total, abs=1e-6)
    assert body["refer"] == any(frame["refer"] for frame in deciding)


def test_a_volume_without_a_gradable_frame_is_ungradable(client):
    rng = np.random.default_rng(3)
    frames = [np.zeros((496, 512), np.uint8), rng.integers(0, 256, (496, 512), dtype=np.uint8)]
    frames.append(np.zeros((496, 512), np.uint8))
    body = post(client, make_dicom(frames), name="volume.dcm", second_opinion="never")
    assert [frame["reason"] for frame in body["frames"]] == [
        "quality:blank",
        "quality:noise",
        "quality:blank",
    ]
    assert body["gradable"] is False and body["reason"] == "quality:blank" and body["refer"] is True


def test_verdicts_are_recorded_and_counted(client, unseen_scans):
    def count(outcome: str) -> float:
        text = client.get("/metrics").text
        pattern = (
            rf'kdoct_safety_gate_total{{model="test-student",outcome="{re.escape(outcome)}"}} ([0-9.e+]+)'
        )
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    before_blank, before_gradable = count("quality:blank"), count("gradable")
    flagged = post(client, blank(), second_opinion="never")
    graded = [post(client, path.read_bytes(), second_opinion="never") for path in unseen_scans[:3]]
    assert count("quality:blank") == before_blank + 1
    assert count("gradable") == before_gradable + sum(a["gradable"] for a in graded)

    record = client.get(f"/predictions/{flagged['prediction_id']}").json()
    assert record["gradable"] is False and record["gate_reason"] == "quality:blank"
    assert record["ood_score"] == pytest.approx(flagged["ood_score"])
    page = client.get("/predictions", params={"gradable": "false", "limit": 500}).json()
    assert flagged["prediction_id"] in {item["id"] for item in page["items"]}
    assert all(item["gradable"] is False for item in page["items"])


def test_the_gate_can_be_turned_off(make_settings):
    with TestClient(create_app(make_settings(safety_gate="off"))) as client:
        body = post(client, blank(), second_opinion="never")
        assert body["gradable"] is None and body["reason"] is None and body["ood_score"] is None
        record = client.get(f"/predictions/{uuid.UUID(body['prediction_id'])}").json()
        assert record["gradable"] is None


@pytest.fixture(scope="module")
def ungated_student(tmp_path_factory, sample_jpegs):
    out = tmp_path_factory.mktemp("ungated") / "student"
    golden = gray_images([sample_jpegs["CNV"][0], sample_jpegs["NORMAL"][0]])
    build_test_bundle(out, "test_efficientnet", (64, 64), "student", golden, seed=7, name="ungated")
    return out


def test_a_bundle_without_a_gate_is_refused_unless_the_gate_is_off(make_settings, ungated_student):
    with (
        pytest.raises(BundleError, match="no safety gate.*KDOCT_SAFETY_GATE=off"),
        TestClient(create_app(make_settings(student_bundle=ungated_student, teacher_bundle=None))),
    ):
        pass
    settings = make_settings(student_bundle=ungated_student, teacher_bundle=None, safety_gate="off")
    with TestClient(create_app(settings)) as client:
        assert post(client, blank())["gradable"] is None
