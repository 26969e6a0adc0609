"""What the node sends back for a classified series, and how: the Comprehensive SR (service/dicom_sr.py)
and the Encapsulated PDF (pdf_report.py) as ResultObjects, delivered by the Exporter (export.py) that
the settings describe, its every attempt on record (service/db/export_attempts.py)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pydicom

from service.db.export_attempts import AttemptLog
from service.dicom_node.export import Exporter, ResultObject
from service.dicom_node.pdf_report import build_pdf_report
from service.dicom_node.results import SeriesResult
from service.dicom_sr import build_series_report

__all__ = ["build_delivery", "result_objects"]

log = logging.getLogger(__name__)


def result_objects(result: SeriesResult) -> list[ResultObject]:
    """The series' SR and PDF, each with the UIDs its delivery is confirmed by."""
    objects = []
    for kind, data in (("sr", build_series_report(result)), ("pdf", build_pdf_report(result))):
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        objects.append(ResultObject(kind, str(header.SOPInstanceUID), str(header.StudyInstanceUID), data))
    return objects


def build_delivery(settings, records) -> tuple[Callable, Exporter | None]:
    """(report, exporter): how a series' objects are built, and the Exporter (None when no destination
    is configured: the results are then on record only, and a warning says so)."""
    exporter = Exporter.from_settings(settings, AttemptLog(records.sessions))
    if exporter is None:
        log.warning(
            "the DICOM node has no destination (KDOCT_DICOM_DESTINATION, KDOCT_DICOMWEB_STOW): results are "
            "on record only, nothing is sent back to the PACS"
        )
    return result_objects, exporter
