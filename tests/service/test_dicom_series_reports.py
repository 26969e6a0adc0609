"""The DICOM node's reports of a classified series: one Comprehensive SR (service/dicom_sr.py
build_series_report) and one Encapsulated PDF (service/dicom_node/pdf_report.py), built from SeriesResults
of real answers (ClassifyResponse, validated by pydantic) on real DICOM sources (make_dicom, which writes
patient tags, decoded by service.imaging as the node decodes what a PACS sends).

Checked: both read back with pydicom (strict), reference every source instance and the source's study,
carry no patient attribute but the empty Type 2 ones, have deterministic SOP Instance UIDs (a report
sent again is the same instance), and dciodvfy (dicom3tools) finds no error in either. The PDF's page
content is uncompressed, so its text is searched in the document's bytes."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.sr import MeasurementReport, srread
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, make_dicom
from service.answer import ClassifyResponse
from service.dicom_node.pdf_report import (
    DISCLAIMER,
    ENCAPSULATED_PDF_STORAGE,
    build_pdf_report,
    pdf_uids,
    report_uids,
)
from service.dicom_node.results import ClassifiedInstance, SeriesResult
from service.dicom_sr import build_report, build_series_report, sr_uids
from service.imaging import DicomSource, ImageLimits, decode_upload

# What make_dicom writes besides the UIDs: none of its values may reach a report.
SECRETS = (PATIENT_NAME, PATIENT_ID, "Doe", "19450101")
STUDENT = {"name": "kdoct-student-neh3", "version": "1.2.0", "sha256": "5d" * 32}
TEACHER = {"name": "kdoct-teacher-neh3", "version": "1.2.0", "sha256": "7e" * 32}
GENERATED_AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _sources(frame_counts: list[int]) -> list[DicomSource]:
    """Real OCT DICOM files of one study and series (patient tags included), decoded by the service:
    the DicomSource of each, as the node holds them."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(25)
    sources = []
    for count in frame_counts:
        dataset = pydicom.dcmread(io.BytesIO(make_dicom([rng.integers(0, 255, (48, 64), np.uint8)] * count)))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        source = decode_upload(buffer.getvalue(), ImageLimits()).dicom_source
        assert source is not None and source.frames == count
        sources.append(source)
    return sources


def _overlay_png() -> str:
    image = Image.new("RGB", (96, 64))
    image.paste((220, 40, 30), (30, 20, 70, 50))  # the "hot" region over a dark B-scan
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _answer(prediction_id: str, label: str, probabilities: dict[str, float], **extra) -> ClassifyResponse:
    frames = extra.pop("frames", None)
    return ClassifyResponse.model_validate(
        {
            "prediction_id": prediction_id,
            "request_id": "dicom-node-test",
            "model": STUDENT,
            "label": label,
            "probabilities": probabilities,
            "confidence": probabilities[label],
            "refer": extra.pop("refer", False),
            "gradable": extra.pop("gradable", True),
            "reason": extra.pop("reason", None),
            "ood_score": 0.7,
            "second_opinion": extra.pop("second_opinion", None),
            "frames": frames,
            "input": {
                "format": "dicom",
                "width": 64,
                "height": 48,
                "frames": len(frames or [0]),
                "sha256": "ab" * 32,
            },
            "timing_ms": {"decode": 2.0, "queue": 0.1, "inference": 9.0, "total": 12.0},
            **extra,
        }
    )


def _volume_frames() -> list[dict]:
    """Three frames: the second failed the gate (blank), the third holds the drusen."""
    verdicts = [(True, None, "normal"), (False, "quality:blank", "normal"), (True, None, "drusen")]
    return [
        {
            "frame_index": index,
            "prediction_id": f"6f1e2d3c-0000-4000-8000-00000000010{index}",
            "label": label,
            "probabilities": {"normal": 0.8, "drusen": 0.15, "cnv": 0.05}
            if label == "normal"
            else {"normal": 0.1, "drusen": 0.85, "cnv": 0.05},
            "confidence": 0.8 if label == "normal" else 0.85,
            "refer": not gradable,
            "gradable": gradable,
            "reason": reason,
        }
        for index, (gradable, reason, label) in enumerate(verdicts)
    ]


@pytest.fixture(scope="module")
def series() -> SeriesResult:
    """An image (normal) then a three-frame volume (drusen, the headline): the volume's answer has the
    teacher's second opinion and the Grad-CAM of its third frame."""
    image_source, volume_source = _sources([1, 3])
    image = _answer(
        "6f1e2d3c-0000-4000-8000-000000000001", "normal", {"normal": 0.9, "drusen": 0.06, "cnv": 0.04}
    )
    volume = _answer(
        "6f1e2d3c-0000-4000-8000-000000000002",
        "drusen",
        {"normal": 0.1, "drusen": 0.85, "cnv": 0.05},
        refer=True,
        frames=_volume_frames(),
        second_opinion={
            "model": TEACHER,
            "label": "drusen",
            "probabilities": {"normal": 0.12, "drusen": 0.8, "cnv": 0.08},
            "confidence": 0.8,
            "agrees": True,
            "frames_reviewed": 3,
        },
        explanation={
            "class_name": "drusen",
            "target_layer": "conv_head",
            "frame_index": 2,
            "map": [[0.0, 0.5], [0.25, 1.0]],
            "map_shape": [2, 2],
            "overlay_png_base64": _overlay_png(),
            "compute_ms": 14.0,
        },
    )
    return SeriesResult(
        (ClassifiedInstance(image, image_source), ClassifiedInstance(volume, volume_source)), 1
    )


@pytest.fixture(scope="module")
def single() -> SeriesResult:
    """One image, gate off, no teacher, no explanation."""
    [source] = _sources([1])
    answer = _answer(
        "6f1e2d3c-0000-4000-8000-000000000009",
        "cnv",
        {"normal": 0.2, "drusen": 0.1, "cnv": 0.7},
        gradable=None,
    )
    return SeriesResult((ClassifiedInstance(answer, source),), 0)


def _read_strictly(data: bytes) -> pydicom.Dataset:
    """Every element converted with pydicom's reading validation raising (the service ignores it)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        for _element in [*dataset.file_meta.iterall(), *dataset.iterall()]:
            pass
    finally:
        settings.reading_validation_mode = before
    return dataset


def _check_patient_and_study(report: pydicom.Dataset, data: bytes, result: SeriesResult) -> None:
    assert report.StudyInstanceUID == result.study_instance_uid
    assert report.SeriesInstanceUID != result.series_instance_uid
    assert report.file_meta.MediaStorageSOPInstanceUID == report.SOPInstanceUID
    assert report.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    empty = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime")
    for keyword in (*empty, "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        assert keyword in report and not report[keyword].value, keyword  # Type 2: present, empty
    for secret in SECRETS:
        assert secret.encode() not in data


def test_the_series_sr_references_every_instance_with_its_own_groups(series):
    data = build_series_report(series)
    report = _read_strictly(data)
    assert report.SOPClassUID == ComprehensiveSRStorage and report.Modality == "SR"
    _check_patient_and_study(report, data, series)
    sources = [item.source for item in series.instances]
    sr = srread(io.BytesIO(data))
    assert sorted(sr.get_evidence()) == sorted(
        (s.study_instance_uid, s.series_instance_uid, s.sop_instance_uid, s.sop_class_uid) for s in sources
    )
    evidence = report.CurrentRequestedProcedureEvidenceSequence
    assert [study.StudyInstanceUID for study in evidence] == [series.study_instance_uid]
    groups = MeasurementReport.from_sequence(sr.content).get_image_measurement_groups()
    # The image's group, then the volume's own and its three frames', in the order received.
    volume = series.instances[1].answer
    expected = [
        (series.instances[0].answer.prediction_id, "image", sources[0].sop_instance_uid, None),
        (volume.prediction_id, "volume", sources[1].sop_instance_uid, None),
    ] + [
        (
            frame.prediction_id,
            f"frame {frame.frame_index + 1}",
            sources[1].sop_instance_uid,
            frame.frame_index + 1,
        )
        for frame in volume.frames or []
    ]
    said = []
    for group in groups:
        [image] = group.source_images
        reference = image.ReferencedSOPSequence[0]
        frame = reference.get("ReferencedFrameNumber")
        said.append((group.tracking_identifier, reference.ReferencedSOPInstanceUID, frame))
    assert said == [
        (f"kdoct prediction {pid} ({where})", sop, None if number is None else pytest.approx(number))
        for pid, where, sop, number in expected
    ]


def test_the_pdf_instance_references_every_source_and_reads_as_the_result(series):
    data = build_pdf_report(series, generated_at=GENERATED_AT)
    report = _read_strictly(data)
    assert report.SOPClassUID == ENCAPSULATED_PDF_STORAGE and report.Modality == "DOC"
    assert report.SeriesNumber == 9902 and report.Manufacturer == "kdoct" and report.ConversionType == "WSD"
    _check_patient_and_study(report, data, series)
    assert [(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in report.SourceInstanceSequence] == [
        (item.source.sop_class_uid, item.source.sop_instance_uid) for item in series.instances
    ]
    assert report.MIMETypeOfEncapsulatedDocument == "application/pdf" and report.BurnedInAnnotation == "NO"
    assert (report.ContentDate, report.ContentTime) == ("20250304", "050607")
    document = bytes(report.EncapsulatedDocument)
    assert len(document) % 2 == 0 and len(document) - report.EncapsulatedDocumentLength in (0, 1)
    pdf = document[: report.EncapsulatedDocumentLength]
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    volume = series.result.answer
    for text in (
        DISCLAIMER,
        "Label: drusen",
        "Calibrated probabilities: normal 0.100, drusen 0.850, cnv 0.050",
        "Confidence: 0.850",
        "Refer for clinician review: yes",
        "Safety gate: gradable",
        "Label: drusen (agrees with the series result: yes)",
        "Calibrated probabilities: normal 0.120, drusen 0.800, cnv 0.080",
        "3 (2)",  # the volume's frames, two of them gradable
        "frame_index 2",
        f"bundle sha256 {STUDENT['sha256']}",
        f"bundle sha256 {TEACHER['sha256']}",
        f"Prediction id: {volume.prediction_id}",
        series.instances[0].answer.prediction_id,
        "Generated at 2025-03-04 05:06:07 UTC",
    ):
        assert _in_pdf(pdf, text), text
    assert b"/Subtype /Image" in pdf  # the Grad-CAM overlay
    for secret in SECRETS:
        assert secret.encode() not in pdf


def _in_pdf(pdf: bytes, text: str) -> bool:
    """Whether the text is in a string of the (uncompressed) page content, as PDF escapes it."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return escaped.encode("latin-1") in pdf


def test_a_pdf_without_explanation_or_teacher_says_so(single):
    report = _read_strictly(build_pdf_report(single))
    pdf = bytes(report.EncapsulatedDocument)
    assert _in_pdf(pdf, "no explanation") and b"/Subtype /Image" not in pdf
    assert _in_pdf(pdf, "Safety gate: no verdict (safety gate off)")
    assert not _in_pdf(pdf, "Second opinion (teacher model)") and _in_pdf(pdf, "Label: cnv")
    assert [r.ReferencedSOPInstanceUID for r in report.SourceInstanceSequence] == [
        single.instances[0].source.sop_instance_uid
    ]


def test_the_reports_uids_are_deterministic_and_their_own(series, single):
    """Built again (another time), a series' reports are the same instances: delivery is idempotent."""
    sr = pydicom.dcmread(io.BytesIO(build_series_report(series)))
    pdf = pydicom.dcmread(io.BytesIO(build_pdf_report(series)))
    again_sr = pydicom.dcmread(io.BytesIO(build_series_report(series)))
    again_pdf = pydicom.dcmread(io.BytesIO(build_pdf_report(series, generated_at=GENERATED_AT)))
    assert (sr.SOPInstanceUID, pdf.SOPInstanceUID) == (again_sr.SOPInstanceUID, again_pdf.SOPInstanceUID)
    assert (sr.SeriesInstanceUID, pdf.SeriesInstanceUID) == (
        again_sr.SeriesInstanceUID,
        again_pdf.SeriesInstanceUID,
    )
    assert report_uids(series) == (sr.SOPInstanceUID, pdf.SOPInstanceUID)
    assert sr_uids(series) == (sr.SeriesInstanceUID, sr.SOPInstanceUID)
    assert pdf_uids(series) == (pdf.SeriesInstanceUID, pdf.SOPInstanceUID)
    # Never the UID of POST /classify's report of the headline answer, nor of another series' reports.
    answer_sr = pydicom.dcmread(io.BytesIO(build_report(series.result.answer, series.result.source)))
    uids = {sr.SOPInstanceUID, pdf.SOPInstanceUID, answer_sr.SOPInstanceUID, *report_uids(single)}
    assert len(uids) == 5
    assert len({sr.SeriesInstanceUID, pdf.SeriesInstanceUID, answer_sr.SeriesInstanceUID}) == 3


def test_build_report_keeps_its_uids(series):
    """POST /classify's report is named as before the series report shared its code."""
    answer = series.result.answer
    report = pydicom.dcmread(io.BytesIO(build_report(answer, series.result.source)))
    assert report.SOPInstanceUID == generate_uid(entropy_srcs=["kdoct-sr", answer.prediction_id])
    assert report.SeriesInstanceUID == generate_uid(entropy_srcs=["kdoct-sr-series", answer.prediction_id])


def _dciodvfy(data: bytes, path: Path) -> tuple[str, list[str]]:
    """dicom3tools' dciodvfy on the file: its whole report, and its Error lines (warnings are expected:
    the empty patient and study attributes, the private coding scheme 99KDOCT)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools (scripts/test-system.sh)")
    path.write_bytes(data)
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    return report, [line for line in report.splitlines() if line.startswith("Error")]


@pytest.mark.parametrize(
    ("build", "iod"), [(build_series_report, "ComprehensiveSR"), (build_pdf_report, "EncapsulatedPDF")]
)
@pytest.mark.parametrize("result", ["series", "single"])
def test_dciodvfy_finds_no_error_in_the_reports(build, iod, result, request, tmp_path: Path):
    report, errors = _dciodvfy(build(request.getfixturevalue(result)), tmp_path / "report.dcm")
    assert iod in report  # it recognised the IOD it validated against
    assert errors == [], report


def test_a_custom_bundles_name_beyond_latin1_neither_fails_nor_breaks_the_pdf(single, tmp_path: Path):
    """fpdf2's core fonts print latin-1 only ('?' for the rest); the DICOM header is UTF-8."""
    item = single.instances[0]
    model = {"name": "kdoct-ünï—model", "version": "1.0.0", "sha256": "11" * 32}
    answer = ClassifyResponse.model_validate({**item.answer.model_dump(), "model": model})
    data = build_pdf_report(SeriesResult((ClassifiedInstance(answer, item.source),), 0))
    report = _read_strictly(data)
    assert report.ManufacturerModelName == "kdoct-ünï—model"
    assert _in_pdf(bytes(report.EncapsulatedDocument), "Model: kdoct-ünï?model 1.0.0")
    _report, errors = _dciodvfy(data, tmp_path / "report.dcm")
    assert errors == [], _report
