"""A classified series: what the reports (the SR and the PDF) and the export are built from; and a
result object, one report as the export delivers it."""

from __future__ import annotations

from dataclasses import dataclass

from service.answer import ClassifyResponse
from service.imaging import DicomSource

__all__ = ["ClassifiedInstance", "ResultObject", "SeriesResult"]


@dataclass(frozen=True)
class ClassifiedInstance:
    """One received instance of the series and its answer (as POST /classify would have answered it,
    and as it is on record). `source` holds its four UIDs and frame count, never a patient attribute."""

    answer: ClassifyResponse
    source: DicomSource


@dataclass(frozen=True)
class SeriesResult:
    """Every classified instance of one series, in the order received, and which of them is the series'
    result: `headline`, the instance whose label is the most severe (service/inference/volume.py's
    order). The headline answer carries the Grad-CAM `explanation` of the series' most suspicious frame
    (its `frame_index` names the frame of a volume); no other answer does."""

    instances: tuple[ClassifiedInstance, ...]
    headline: int

    @property
    def study_instance_uid(self) -> str:
        return self.instances[0].source.study_instance_uid

    @property
    def series_instance_uid(self) -> str:
        return self.instances[0].source.series_instance_uid

    @property
    def result(self) -> ClassifiedInstance:
        return self.instances[self.headline]


@dataclass(frozen=True)
class ResultObject:
    """One DICOM Part 10 file to deliver (service/dicom_node/export.py; dead_letter.py keeps it)."""

    kind: str  # "sr" | "pdf"
    sop_instance_uid: str
    study_instance_uid: str
    data: bytes

    def __repr__(self) -> str:  # never a UID in a log line or a traceback
        return f"ResultObject(kind={self.kind!r}, bytes={len(self.data)}, uids=<withheld>)"
