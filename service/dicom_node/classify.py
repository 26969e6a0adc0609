"""A series, classified as one request through the service's own parts: the ingress gate's
dicom_series door (an admission slot, the per-request frame and pixel limits and the memory budget
across all its instances), the Intake (bounded decoding, the safety gate's quality check), the
classifier (student, and the teacher by the service's policy), the Recorder (on record before anything
is sent back, in the same chain), then Grad-CAM on the most severe answer for the PDF. Nothing here
decodes, infers or records by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from service.dicom_node.results import ClassifiedInstance, SeriesResult
from service.inference.volume import SEVERITY
from service.ingress.doors import DICOM_SERIES
from service.ingress.gate import IngressGate
from service.pipeline import ClassificationPipeline
from service.problems import Problem
from service.records import Recorder
from service.security import Client

__all__ = ["SeriesClassifier", "caller_client"]

log = logging.getLogger(__name__)


def caller_client(calling_ae: str) -> Client:
    """An allow-listed caller, as the gate and the records know it: its AE title (never a patient
    attribute), with the classify scope only."""
    return Client(id=f"dicom:{calling_ae}", scopes=frozenset({"classify"}))


def _severity(answer) -> tuple[int, float]:
    return (SEVERITY.get(answer.label, len(SEVERITY)), answer.confidence)


class SeriesClassifier:
    def __init__(self, gate: IngressGate, pipeline: ClassificationPipeline, recorder: Recorder) -> None:
        self.gate = gate
        self.pipeline = pipeline
        self.recorder = recorder

    async def classify(self, paths: Sequence[Path], calling_ae: str) -> SeriesResult:
        """The series' answers, on record; a Problem (with its HTTP status) when it is refused."""
        client = caller_client(calling_ae)
        started = time.perf_counter()
        ticket = await self.gate.enter(DICOM_SERIES, client)
        try:
            intake = self.pipeline.intake
            datas = []
            for path in paths:
                ticket.charge_bytes(path.stat().st_size, "the series' stored instances")
                datas.append(await intake.in_pool(path.read_bytes))
            prepared = await intake.prepare_all(datas, ticket)
            del datas
            request_id = f"dicom-{uuid.uuid4()}"
            policy = self.pipeline.classifier.policy
            answers = await asyncio.gather(
                *(
                    self.pipeline.answer(item, ms, policy=policy, request_id=request_id, started=started)
                    for item, ms in prepared
                )
            )
            sources = [item.upload.dicom_source for item, _ in prepared]
            if any(source is None for source in sources):
                raise Problem(
                    "invalid-image",
                    "an instance lacks a valid Study, Series or SOP Instance UID or SOP Class UID: a report "
                    "could not reference it",
                    reason="bad_request",
                )
            headline = max(range(len(answers)), key=lambda index: _severity(answers[index]))
            await self.recorder.record(answers, client_id=client.id)
            # After recording, like every other answer's extras: the heatmap is never on record. The
            # answers are on record now, so a busy explainer costs the PDF its heatmap, not a retry.
            try:
                await self.pipeline.explain(prepared[headline][0].upload, answers[headline])
            except Problem as problem:
                log.warning("series reported without a heatmap: %s", problem.detail)
        finally:
            ticket.close()
        instances = tuple(ClassifiedInstance(a, s) for a, s in zip(answers, sources, strict=True))
        return SeriesResult(instances, headline)
