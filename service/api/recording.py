"""What every classifying route does after the pipeline answered: put the rows on record (503 when
they cannot be), then count the answer in the metrics. Shared by POST /classify and the Open
Inference Protocol's infer, so both keep the same records and the same metrics."""

from __future__ import annotations

import logging

from service import prometheus
from service.answer import ClassifyResponse
from service.inference.second_opinion import outcome
from service.problems import Problem
from service.records import PredictionSink, RecordUnavailable

__all__ = ["count_answer", "put_on_record"]

log = logging.getLogger(__name__)


async def put_on_record(sink: PredictionSink, rows: list[dict]) -> None:
    """Never answer a prediction that is not on record: any failure of the sink is a 503."""
    try:
        await sink.record(rows)
    except RecordUnavailable as exc:
        raise Problem(
            "record-unavailable", str(exc), reason="record_unavailable", headers={"Retry-After": "5"}
        ) from None
    except Exception as exc:  # noqa: BLE001
        log.error("prediction sink failed", exc_info=exc)
        raise Problem(
            "record-unavailable", "the prediction could not be recorded", reason="record_unavailable",
            headers={"Retry-After": "5"},
        ) from None  # fmt: skip


def count_answer(model: str, answer: ClassifyResponse) -> None:
    """Metrics per answered upload (a volume counts once, by its volume result)."""
    prometheus.PREDICTIONS.labels(model=model, label=answer.label).inc()
    prometheus.PREDICTION_CONFIDENCE.labels(model=model).observe(answer.confidence)
    if answer.refer:
        prometheus.REFERRALS.labels(model=model).inc()
    for judged in answer.frames or [answer]:
        if judged.gradable is not None:
            gate_outcome = "gradable" if judged.gradable else judged.reason
            prometheus.SAFETY_GATE.labels(model=model, outcome=gate_outcome).inc()
    opinion = answer.second_opinion
    if opinion is not None:
        prometheus.SECOND_OPINIONS.labels(outcome=outcome(answer.label, opinion.label)).inc()
