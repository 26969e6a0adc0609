"""A classified series as a DICOM Encapsulated PDF (PS3.3 A.45.1), sent back to the PACS beside the
Comprehensive SR (service/dicom_sr.py): the same answers, for a person to read in any viewer.

The PDF (fpdf2) says that it is not for diagnostic use without clinician review, then the series'
result (the headline instance: label, calibrated probabilities, confidence, referral, the safety gate's
verdict, the teacher's second opinion), every instance of the series, the Grad-CAM overlay of the most
suspicious frame, the models (name, version, bundle sha256), the prediction ids that lead to the
records, and when it was generated. Its page content is left uncompressed: the text stays searchable
in the bytes (a report is a few pages; the overlay image is compressed either way).

The DICOM instance: the source's Study Instance UID, a series of its own (Modality DOC), a SOP Instance
UID derived from the headline's prediction_id (the same result is the same instance, so a report sent
again is one copy in the PACS), every source instance in SourceInstanceSequence, and, as the SR, the
Type 2 patient and study attributes present but empty (service/dicom_sr._evidence says why).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from fpdf import FPDF
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.answer import Explanation, ModelIdentity, SecondOpinion
from service.dicom_node.results import ClassifiedInstance, SeriesResult
from service.dicom_sr import EMPTY_PATIENT_AND_STUDY, MANUFACTURER, ReportUids, sr_uids

__all__ = [
    "DISCLAIMER",
    "ENCAPSULATED_PDF_STORAGE",
    "SeriesReportUids",
    "build_pdf_report",
    "pdf_uids",
    "render_pdf",
    "report_uids",
]

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
DISCLAIMER = "Not for diagnostic use without clinician review."
DOCUMENT_TITLE = "kdoct OCT classification report"
PDF_SERIES_NUMBER = 9902  # after the SR's 9901: both sort after the acquisition's own series
_PDF_ENTROPY = "kdoct-series-pdf"  # never the entropy of an SR's UIDs (service/dicom_sr._uids)
# The instance table: #, label, confidence, refer, safety gate, frames (gradable), prediction id (mm).
_COLUMNS = ("#", "Label", "Confidence", "Refer", "Safety gate", "Frames (gradable)", "Prediction id")
_COLUMN_WIDTHS = (8, 17, 17, 10, 40, 24, 64)
_OVERLAY_WIDTH_MM = 90


class SeriesReportUids(NamedTuple):
    """The SOP Instance UIDs of a series' two reports: what the export confirms (QIDO-RS) or logs."""

    sr: str
    pdf: str


def pdf_uids(result: SeriesResult) -> ReportUids:
    """The series and SOP Instance UIDs of build_pdf_report(result), from the headline's prediction_id."""
    prediction_id = result.result.answer.prediction_id
    return ReportUids(
        series=generate_uid(entropy_srcs=[f"{_PDF_ENTROPY}-series", prediction_id]),
        instance=generate_uid(entropy_srcs=[_PDF_ENTROPY, prediction_id]),
    )


def report_uids(result: SeriesResult) -> SeriesReportUids:
    """The SOP Instance UIDs of the SR and the PDF of this result, without building either."""
    return SeriesReportUids(sr=sr_uids(result).instance, pdf=pdf_uids(result).instance)


def build_pdf_report(result: SeriesResult, *, generated_at: datetime | None = None) -> bytes:
    """The series' report as a DICOM Part 10 file (Encapsulated PDF Storage, explicit VR little endian).
    `generated_at` (default: now, UTC) is printed in the PDF and is the instance's content date/time."""
    generated_at = (generated_at or datetime.now(UTC)).astimezone(UTC)
    dataset = _dataset(result, render_pdf(result, generated_at), generated_at)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- The PDF ---------------------------------------------------------------------------------------------


def render_pdf(result: SeriesResult, generated_at: datetime) -> bytes:
    """The PDF document itself (A4, uncompressed page content)."""
    pdf = FPDF(format="A4")
    pdf.set_compression(False)
    pdf.set_creation_date(generated_at)
    pdf.set_title(DOCUMENT_TITLE)
    pdf.set_author(MANUFACTURER)
    pdf.set_margins(15, 15, 15)
    pdf.add_page()
    headline = result.result.answer
    _title(pdf, generated_at)
    _series_result(pdf, result)
    if headline.second_opinion is not None:
        _second_opinion(pdf, headline.second_opinion)
    _instances(pdf, result)
    _explanation(pdf, headline.explanation, result.headline)
    _models(pdf, result)
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    """fpdf2's core fonts encode latin-1 only: a model name, label or reason outside it (a custom
    bundle's) is printed with '?' in place of what cannot be, rather than failing the report."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _line(pdf: FPDF, text: str, *, size: float = 10, style: str = "") -> None:
    pdf.set_font("Helvetica", style, size)
    pdf.multi_cell(0, size * 0.5, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    _line(pdf, text, size=13, style="B")
    pdf.ln(1)


def _title(pdf: FPDF, generated_at: datetime) -> None:
    _line(pdf, DOCUMENT_TITLE, size=18, style="B")
    pdf.ln(2)
    pdf.set_text_color(180, 0, 0)  # red and bold: the first thing a reader sees after the title
    _line(pdf, DISCLAIMER, size=14, style="B")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)
    _line(pdf, f"Generated at {generated_at:%Y-%m-%d %H:%M:%S} UTC by {MANUFACTURER}", size=9)


def _probabilities(probabilities: dict[str, float]) -> str:
    return ", ".join(f"{label} {value:.3f}" for label, value in probabilities.items())


def _gate(gradable: bool | None, reason: str | None) -> str:
    if gradable is None:  # KDOCT_SAFETY_GATE=off: no verdict
        return "no verdict (safety gate off)"
    return "gradable" if gradable else f"not gradable ({reason or 'no reason given'})"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _series_result(pdf: FPDF, result: SeriesResult) -> None:
    answer = result.result.answer
    _heading(pdf, "Series result")
    _line(pdf, f"Label: {answer.label}", size=12, style="B")
    _line(pdf, f"Calibrated probabilities: {_probabilities(answer.probabilities)}")
    _line(pdf, f"Confidence: {answer.confidence:.3f}")
    _line(pdf, f"Refer for clinician review: {_yes_no(answer.refer)}")
    _line(pdf, f"Safety gate: {_gate(answer.gradable, answer.reason)}")
    _line(pdf, f"From instance #{result.headline + 1} of {len(result.instances)} (the most severe label)")
    _line(pdf, f"Prediction id: {answer.prediction_id}", size=9)


def _second_opinion(pdf: FPDF, opinion: SecondOpinion) -> None:
    _heading(pdf, "Second opinion (teacher model)")
    _line(pdf, f"Label: {opinion.label} (agrees with the series result: {_yes_no(opinion.agrees)})")
    _line(pdf, f"Calibrated probabilities: {_probabilities(opinion.probabilities)}")
    _line(pdf, f"Confidence: {opinion.confidence:.3f}")
    if opinion.frames_reviewed is not None:
        _line(pdf, f"Frames reviewed: {opinion.frames_reviewed}")


def _frames(item: ClassifiedInstance) -> str:
    """A volume's frame count and how many the gate passed; "1" for an image."""
    if item.source.frames <= 1:
        return "1"
    frames = item.answer.frames or []
    if all(frame.gradable is None for frame in frames):
        return f"{item.source.frames} (gate off)"
    return f"{item.source.frames} ({sum(bool(frame.gradable) for frame in frames)})"


def _instance_row(number: int, item: ClassifiedInstance, headline: bool) -> tuple[str, ...]:
    answer = item.answer
    return (
        f"{number}{' *' if headline else ''}",
        answer.label,
        f"{answer.confidence:.3f}",
        _yes_no(answer.refer),
        _gate(answer.gradable, answer.reason),
        _frames(item),
        answer.prediction_id,
    )


def _instances(pdf: FPDF, result: SeriesResult) -> None:
    _heading(pdf, f"Instances ({len(result.instances)}, in the order received)")
    rows = [
        _instance_row(number, item, number - 1 == result.headline)
        for number, item in enumerate(result.instances, start=1)
    ]
    pdf.set_font("Helvetica", "", 8)
    with pdf.table(col_widths=_COLUMN_WIDTHS, width=sum(_COLUMN_WIDTHS), text_align="LEFT") as table:
        for cells in [_COLUMNS, *rows]:
            row = table.row()
            for cell in cells:
                row.cell(_latin1(cell))
    _line(
        pdf,
        "* the series result. Frames (gradable): a volume's frames, and how many the gate passed.",
        size=8,
    )
    pdf.ln(1)
    for number, item in enumerate(result.instances, start=1):
        _line(pdf, f"#{number} SOP Instance UID {item.source.sop_instance_uid}", size=7)


def _explanation(pdf: FPDF, explanation: Explanation | None, headline: int) -> None:
    _heading(pdf, "Explanation (Grad-CAM)")
    if explanation is None:
        _line(pdf, "no explanation")
        return
    where = "" if explanation.frame_index is None else f", frame {explanation.frame_index + 1}"
    _line(
        pdf,
        f"{explanation.method} of class {explanation.class_name} on instance #{headline + 1}{where} "
        f"(frame_index {explanation.frame_index}), layer {explanation.target_layer}",
    )
    pdf.image(io.BytesIO(base64.b64decode(explanation.overlay_png_base64)), w=_OVERLAY_WIDTH_MM)


def _model_lines(role: str, model: ModelIdentity) -> Iterable[str]:
    yield f"{role}: {model.name} {model.version}"
    yield f"bundle sha256 {model.sha256}"


def _models(pdf: FPDF, result: SeriesResult) -> None:
    _heading(pdf, "Models")
    headline = result.result.answer
    lines = list(_model_lines("Model", headline.model))
    if headline.second_opinion is not None:
        lines += _model_lines("Teacher", headline.second_opinion.model)
    for text in lines:
        _line(pdf, text, size=9)


# --- The DICOM instance ----------------------------------------------------------------------------------


def _dataset(result: SeriesResult, pdf: bytes, generated_at: datetime) -> Dataset:
    uids = pdf_uids(result)
    dataset = Dataset()
    dataset.file_meta = _file_meta(uids.instance)
    # UTF-8: the model's name and version (a custom bundle's) may hold any character.
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    dataset.SOPInstanceUID = uids.instance
    _patient_and_study(dataset, result.study_instance_uid)
    _series_and_equipment(dataset, uids.series, result.result.answer.model)
    _document(dataset, pdf, generated_at)
    dataset.SourceInstanceSequence = [_reference(item) for item in result.instances]
    return dataset


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _patient_and_study(dataset: Dataset, study_instance_uid: str) -> None:
    """The source's study, and its Type 2 patient and study attributes present but empty."""
    dataset.StudyInstanceUID = study_instance_uid
    for keyword in EMPTY_PATIENT_AND_STUDY:
        setattr(dataset, keyword, None)


def _series_and_equipment(dataset: Dataset, series_instance_uid: str, model: ModelIdentity) -> None:
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = series_instance_uid
    dataset.SeriesNumber = PDF_SERIES_NUMBER
    dataset.SeriesDescription = "kdoct OCT classification report (PDF)"
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = model.name[:64]
    dataset.SoftwareVersions = model.version[:64]
    dataset.ConversionType = "WSD"  # SC Equipment: made on a workstation, not scanned


def _document(dataset: Dataset, pdf: bytes, generated_at: datetime) -> None:
    """The Encapsulated Document module, and when it was made."""
    date, time = generated_at.strftime("%Y%m%d"), generated_at.strftime("%H%M%S")
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    dataset.ContentDate, dataset.ContentTime = date, time
    dataset.AcquisitionDateTime = f"{date}{time}+0000"
    dataset.TimezoneOffsetFromUTC = "+0000"
    dataset.InstanceNumber = 1
    dataset.BurnedInAnnotation = "NO"  # a document, no image with patient text burned in
    dataset.DocumentTitle = DOCUMENT_TITLE
    dataset.ConceptNameCodeSequence = [_code(codes.LN.DiagnosticImagingReport)]
    # An algorithm's screening answer, not verified by a clinician (as the SR's VerificationFlag).
    dataset.VerificationFlag = "UNVERIFIED"
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # An OB value has even length: padded with 0x00; the length says where the PDF ends.
    dataset.EncapsulatedDocument = pdf + b"\x00" * (len(pdf) % 2)
    dataset.EncapsulatedDocumentLength = len(pdf)


def _code(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _reference(item: ClassifiedInstance) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = item.source.sop_class_uid
    reference.ReferencedSOPInstanceUID = item.source.sop_instance_uid
    return reference
