"""POST /classify with `Accept: application/dicom`: the answer as a DICOM Comprehensive SR, on tiny real
bundles and real B-scans, read back with pydicom (strict) and highdicom.

Validation: pydicom reads every element back with its reading validation set to raise, highdicom
parses the content tree as a TID 1500 Measurement Report, and dicom3tools' dciodvfy (offline) checks the
report against the Comprehensive SR IOD and must find no error. The dicom-validator package is installed but
cannot run here: it first downloads the DICOM standard (edition list and docbook parts) from
dicom.nema.org, which this machine cannot reach, and ships no copy; test_dicom_validator runs it only
where a downloaded standard is given (KDOCT_DICOM_STANDARD_PATH) and is skipped otherwise.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from highdicom.sr import MeasurementReport, srread
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage

from kdoct.bundle import load_bundle
from kdoct_testing.records import MemorySink
from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, encode, jpeg_gray, make_dicom
from service.api.classify import negotiate
from service.app import create_app
from service.dicom_sr import DICOM_MEDIA_TYPE, finding_code
from service.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

SR_ACCEPT = {"Accept": DICOM_MEDIA_TYPE}
PREDICTION = re.compile(r"kdoct prediction ([0-9a-f-]{36}) \((image|volume|frame \d+)\)")
# What make_dicom writes besides the UIDs: none of its values may reach the report.
SECRETS = (PATIENT_NAME, PATIENT_ID, "Doe", "19450101")


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def sr_client(make_settings, sink):
    with TestClient(create_app(make_settings(second_opinion="never"), sink=sink)) as client:
        yield client


@pytest.fixture(scope="module")
def volume_frames(jpeg_paths) -> list[np.ndarray]:
    frames = [jpeg_gray(path) for path in jpeg_paths]
    return [frame for frame in frames if frame.shape == frames[0].shape][:3]


def _post(client: TestClient, data: bytes, name: str = "scan.dcm", headers: dict | None = None):
    return client.post("/classify", files={"file": (name, data, "application/octet-stream")}, headers=headers)


def _read_strictly(data: bytes) -> pydicom.Dataset:
    """pydicom's own validation: every value converted, with invalid VR values raising (the service
    sets reading validation to IGNORE process-wide, so it is raised here for the read only)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=False)
        for _element in dataset.file_meta.iterall():
            pass
        for _element in dataset.iterall():
            pass
    finally:
        settings.reading_validation_mode = before
    return dataset


def _texts(dataset: pydicom.Dataset, concept: str) -> list[str]:
    """TEXT values of the content items named `concept` (a code value), anywhere in the tree."""
    found = []
    for item in dataset.iterall():
        if item.keyword != "ContentSequence":
            continue
        for content in item.value:
            names = content.get("ConceptNameCodeSequence")
            if names and names[0].CodeValue == concept and "TextValue" in content:
                found.append(str(content.TextValue))
    return found


def _check_references_and_patient(data: bytes, upload: bytes) -> tuple[pydicom.Dataset, list]:
    """The report names the source study/series/instance and nothing of its patient; its groups."""
    source = pydicom.dcmread(io.BytesIO(upload))
    report = _read_strictly(data)
    assert report.SOPClassUID == ComprehensiveSRStorage and report.Modality == "SR"
    assert report.file_meta.MediaStorageSOPInstanceUID == report.SOPInstanceUID
    # Same study, its own series and instance.
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    assert report.SOPInstanceUID != source.SOPInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == source.StudyInstanceUID
    series = evidence[0].ReferencedSeriesSequence
    assert len(series) == 1 and series[0].SeriesInstanceUID == source.SeriesInstanceUID
    instance = series[0].ReferencedSOPSequence
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in instance] == [
        (source.SOPClassUID, source.SOPInstanceUID)
    ]
    # Patient module: the SR IOD makes PatientName, PatientID, PatientBirthDate and PatientSex Type 2,
    # so they must be present, and Type 2 may be empty. They are empty: the service never holds patient
    # identity (answers, records, logs, metrics), and the caller, who sent the image and knows the
    # patient, files the report by the Study Instance UID and the referenced instance. Nothing else of
    # the source (accession number, study date, the device's manufacturer) is copied either.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert keyword in report and not report[keyword].value, keyword
    for keyword in ("OtherPatientIDsSequence", "PatientAge", "IssuerOfPatientID", "StudyDescription"):
        assert keyword not in report
    for secret in SECRETS:
        assert secret.encode() not in data
    # highdicom reads it back as an SR with this evidence and a TID 1500 tree.
    sr = srread(io.BytesIO(data))
    assert sr.get_evidence() == [
        (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.SOPClassUID)
    ]
    groups = MeasurementReport.from_sequence(sr.content).get_image_measurement_groups()
    return report, groups


def _group_result(group) -> dict:
    """What one measurement group says, in the words of a record."""
    match = PREDICTION.fullmatch(group.tracking_identifier)
    assert match, group.tracking_identifier
    evaluations = {item.name.value: item.value for item in group.get_qualitative_evaluations()}
    yes_no = {"373066001": True, "373067005": False}
    gradable = evaluations.get("gradable")
    reason = evaluations.get("gate-reason")
    [source] = group.source_images
    frames = source.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
    return {
        "id": match.group(1),
        "where": match.group(2),
        "frame_numbers": None if frames is None else [int(f) for f in np.atleast_1d(frames)],
        "label": group.finding_type,  # TID 1501 Finding (DCM 121071)
        "probabilities": {
            item.name.value.removeprefix("p-"): float(item.value) for item in group.get_measurements()
        },
        "units": {item.unit.value for item in group.get_measurements()},
        "gradable": None if gradable is None else yes_no[gradable.value],
        "gate_reason": None if reason is None else reason.value,
        "refer": yes_no[evaluations["refer"].value],
    }


def _same_as_record(said: dict, record: dict) -> None:
    assert said["label"] == finding_code(record["label"])
    assert said["probabilities"] == pytest.approx(record["probabilities"], abs=1e-9)
    assert said["units"] == {"1"}  # UCUM "no units": a probability in [0, 1]
    assert (said["gradable"], said["gate_reason"], said["refer"]) == (
        record["gradable"],
        record["gate_reason"],
        record["refer"],
    )


def test_a_single_frame_dicom_answers_an_sr_of_its_recorded_prediction(sr_client, sink, jpeg_paths, bundles):
    upload = make_dicom([jpeg_gray(jpeg_paths[0])])
    response = _post(sr_client, upload, headers=SR_ACCEPT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_MEDIA_TYPE
    report, groups = _check_references_and_patient(response.content, upload)
    [group] = groups
    said = _group_result(group)
    assert said["where"] == "image" and said["frame_numbers"] is None  # a single frame: the instance
    record = sink.get(said["id"])
    assert record is not None and record["frame_index"] == 0 and record["format"] == "dicom"
    _same_as_record(said, record)
    assert said["gradable"] is not None  # the gate is on in these bundles
    assert f"kdoct-sr-{said['id']}.dcm" in response.headers["content-disposition"]
    # Algorithm identification (TID 4019) and the device observer: name, version, bundle sha256.
    bundle = load_bundle(bundles["student"])
    assert _texts(report, "111001") == [bundle.name]  # Algorithm Name, once per group
    assert _texts(report, "111003") == [bundle.version]  # Algorithm Version
    assert _texts(report, "111002") == [f"bundle sha256 {bundle.sha256}"]  # Algorithm Parameters
    assert _texts(report, "121013") == [bundle.name]  # Device Observer Name
    assert report.CompletionFlag == "COMPLETE" and report.VerificationFlag == "UNVERIFIED"
    # The scheme of the private codes is declared in the report.
    assert [item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence] == ["99KDOCT"]


def test_a_volume_sr_holds_the_volume_result_and_every_frame(sr_client, sink, volume_frames):
    upload = make_dicom(volume_frames)
    response = _post(sr_client, upload, name="volume.dcm", headers=SR_ACCEPT)
    assert response.status_code == 200, response.text
    _report, groups = _check_references_and_patient(response.content, upload)
    said = [_group_result(group) for group in groups]
    assert [s["where"] for s in said] == ["volume"] + [f"frame {n}" for n in range(1, len(volume_frames) + 1)]
    assert [s["frame_numbers"] for s in said] == [None] + [[n] for n in range(1, len(volume_frames) + 1)]
    volume = sink.get(said[0]["id"])
    assert volume is not None and volume["frame_index"] is None
    _same_as_record(said[0], volume)
    for number, frame in enumerate(said[1:]):
        record = sink.get(frame["id"])
        assert record is not None and record["frame_index"] == number
        _same_as_record(frame, record)
    # Each frame and the volume are on record, exactly those rows.
    assert len(sink.all()) == len(volume_frames) + 1


def test_the_sr_answer_is_recorded_as_the_json_answer_is(sr_client, sink, jpeg_paths):
    upload = make_dicom([jpeg_gray(jpeg_paths[1])])
    as_json = _post(sr_client, upload).json()
    as_sr = _post(sr_client, upload, headers={**SR_ACCEPT, "X-Request-ID": as_json["request_id"]})
    assert as_sr.status_code == 200
    json_row, sr_row = sink.all()
    varying = {"id", "created_at", "timing_ms", "request_id"}
    assert {k: v for k, v in json_row.items() if k not in varying} == {
        k: v for k, v in sr_row.items() if k not in varying
    }


def test_a_png_cannot_be_answered_as_an_sr(sr_client, sink, jpeg_paths):
    with Image.open(jpeg_paths[0]) as image:
        png = encode(image, "PNG")
    response = _post(sr_client, png, name="scan.png", headers=SR_ACCEPT)
    assert response.status_code == 406, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["type"] == PROBLEM_BASE + "not-acceptable" and "PNG" in body["detail"]
    assert "application/json" in body["detail"]
    assert sink.all() == []  # refused before inference: nothing predicted, nothing recorded
    # A client that takes JSON as well gets JSON for the image.
    fallback = _post(
        sr_client, png, name="scan.png", headers={"Accept": "application/dicom, application/json;q=0.5"}
    )
    assert fallback.status_code == 200 and fallback.json()["input"]["format"] == "png"


def test_a_dicom_without_valid_uids_cannot_be_answered_as_an_sr(sr_client, sink, jpeg_paths):
    dataset = pydicom.dcmread(io.BytesIO(make_dicom([jpeg_gray(jpeg_paths[0])])))
    del dataset.StudyInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    response = _post(sr_client, buffer.getvalue(), headers=SR_ACCEPT)
    assert response.status_code == 406 and "StudyInstanceUID" in response.json()["detail"]
    assert sink.all() == []
    assert _post(sr_client, buffer.getvalue()).status_code == 200  # JSON needs no UID


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("text/html", "json"),  # names neither: JSON, as the service always answered
        ("application/dicom", "dicom"),
        ("Application/DICOM", "dicom"),
        ("application/dicom, application/json;q=0.5", "dicom-or-json"),
        ("application/dicom;q=0.4, application/json", "json"),
        ("application/dicom, */*;q=0.1", "dicom-or-json"),
        ("application/dicom, application/json;q=0, */*", "dicom"),
        ("application/dicom;q=0", "json"),
        ("application/dicom;q=oops", "json"),
    ],
)
def test_accept_negotiation(accept, expected):
    assert negotiate(accept) == expected


def test_dicom_validator(sr_client, volume_frames, tmp_path: Path):
    standard = os.environ.get("KDOCT_DICOM_STANDARD_PATH")
    if not standard:
        pytest.skip(
            "dicom-validator needs the DICOM standard, downloaded from dicom.nema.org (unreachable here, "
            "no copy shipped): set KDOCT_DICOM_STANDARD_PATH to a downloaded one to run it"
        )
    response = _post(sr_client, make_dicom(volume_frames), headers=SR_ACCEPT)
    path = tmp_path / "report.dcm"
    path.write_bytes(response.content)
    result = subprocess.run(
        [sys.executable, "-m", "dicom_validator.validate_iods", "--standard-path", standard, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dciodvfy_finds_no_error_in_the_report(sr_client, volume_frames, tmp_path: Path):
    """dicom3tools' dciodvfy (David Clunie's IOD validator, Debian package dicom3tools, works offline)
    checks the SR against the Comprehensive SR IOD: modules, attribute types, value representations,
    the content tree. Its warnings are expected (our private coding scheme 99KDOCT; the empty patient
    and study attributes a report of an anonymous upload has); an error fails the test."""
    import shutil

    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools (scripts/test-system.sh)")
    for frames in (volume_frames[:1], volume_frames):
        response = _post(sr_client, make_dicom(frames), headers=SR_ACCEPT)
        assert response.status_code == 200, response.text
        path = tmp_path / f"report-{len(frames)}.dcm"
        path.write_bytes(response.content)
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert "ComprehensiveSR" in report  # it recognised the IOD it validated against
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert result.returncode == 0 and not errors, report
