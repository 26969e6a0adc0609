"""The real-world performance figures as GET /monitoring/performance answers them and the monthly
report prints them: per model, for the whole window and per bucket, per class (counts, sensitivity,
specificity, PPV with Wilson 95 % intervals), contradicted confident answers, ungradable predictions
apart, and the feedback coverage. Built from the database's counts (service/db/performance.py) with
the pure statistics of performance.py.

The rules (docs/RECORDS.md, "Real-world performance"):
- only predictions with feedback count in the class figures, and only their latest feedback;
- a prediction the safety gate found ungradable (gradable false) was referred, not answered: it is
  counted under `ungradable`, never in the class figures; gradable null (gate off, rows from before
  revision 0005) was answered and counts;
- a confident answer has calibrated confidence >= the threshold (KDOCT_SECOND_OPINION_THRESHOLD: below
  it the service itself calls the answer unsure and refers it); feedback naming another class
  contradicts it, counted per predicted class;
- coverage = predictions with feedback / predictions, ungradable ones included in both.
"""

from __future__ import annotations

import calendar
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from service.answer import ModelIdentity
from service.db.performance import Bucket, FeedbackData, FeedbackTally, ModelKey, feedback_data
from service.monitoring.performance import Interval, class_performance_from_counts, wilson

__all__ = [
    "ClassFigures",
    "IntervalOut",
    "ModelPerformance",
    "PerformanceReport",
    "UngradableOut",
    "WindowPerformance",
    "bucket_end",
    "load_performance",
    "summarise",
]


class IntervalOut(BaseModel):
    value: float | None = Field(description="the proportion; null when there were no trials")
    low: float | None = Field(description="Wilson score 95 % interval, lower bound")
    high: float | None = Field(description="Wilson score 95 % interval, upper bound")


class ClassFigures(BaseModel):
    name: str
    tp: int = Field(description="feedback says this class and the model answered it")
    fn: int = Field(description="feedback says this class, the model answered another")
    fp: int = Field(description="the model answered this class, feedback says another")
    tn: int = Field(description="neither the feedback nor the model says this class")
    sensitivity: IntervalOut = Field(description="tp / (tp + fn)")
    specificity: IntervalOut = Field(description="tn / (tn + fp)")
    ppv: IntervalOut = Field(description="positive predictive value, tp / (tp + fp)")
    contradicted_confident: int = Field(
        description="confident answers of this class (confidence >= confident_threshold) whose feedback "
        "names another class"
    )


class UngradableOut(BaseModel):
    with_feedback: int = Field(description="predictions the safety gate found ungradable, with feedback")
    by_feedback_label: dict[str, int] = Field(description="what the clinicians said they show")


class WindowPerformance(BaseModel):
    start: datetime | None = Field(description="inclusive; null: from the first record")
    end: datetime | None = Field(description="exclusive; null: to the last record")
    predictions: int = Field(description="predictions made in the window, with feedback or not")
    with_feedback: int = Field(description="of them, those with feedback (ungradable ones included)")
    feedback_coverage: float | None = Field(description="with_feedback / predictions; null with none")
    answered_with_feedback: int = Field(description="with feedback and not ungradable: the class figures' n")
    agreement: IntervalOut = Field(
        description="answers the latest feedback agrees with, of answered_with_feedback"
    )
    contradicted_confident: int = Field(description="confident answers whose feedback names another class")
    classes: list[ClassFigures]
    ungradable: UngradableOut


class ModelPerformance(BaseModel):
    model: ModelIdentity
    class_names: list[str]
    overall: WindowPerformance
    buckets: list[WindowPerformance] = Field(description="per bucket, oldest first; empty without `bucket`")


class PerformanceReport(BaseModel):
    since: datetime | None
    until: datetime | None
    bucket: Bucket | None
    confident_threshold: float = Field(
        description="KDOCT_SECOND_OPINION_THRESHOLD: a confident answer's floor"
    )
    models: list[ModelPerformance]


def _interval(interval: Interval) -> IntervalOut:
    return IntervalOut(value=interval.value, low=interval.low, high=interval.high)


def bucket_end(start: date, bucket: Bucket) -> date:
    if bucket == "day":
        return start + timedelta(days=1)
    if bucket == "week":
        return start + timedelta(days=7)
    return start + timedelta(days=calendar.monthrange(start.year, start.month)[1])


def _class_figures(
    counts: Counter[tuple[str, str]], contradicted: Counter[str], class_names: tuple[str, ...]
) -> list[ClassFigures]:
    # A class the model never had (an old record's label) still counts, after the model's own.
    names = list(class_names) + sorted({n for pair in counts for n in pair} - set(class_names))
    return [
        ClassFigures(
            name=f.name,
            tp=f.tp,
            fn=f.fn,
            fp=f.fp,
            tn=f.tn,
            sensitivity=_interval(f.sensitivity),
            specificity=_interval(f.specificity),
            ppv=_interval(f.ppv),
            contradicted_confident=contradicted[f.name],
        )
        for f in class_performance_from_counts(counts, names)
    ]


def _window(
    start: datetime | None,
    end: datetime | None,
    predictions: int,
    tallies: list[FeedbackTally],
    class_names: tuple[str, ...],
) -> WindowPerformance:
    """One window's figures: the answered predictions (not ungradable) in the class figures, the
    ungradable ones apart, every one with feedback in the coverage."""
    counts: Counter[tuple[str, str]] = Counter()  # (actual, predicted)
    contradicted: Counter[str] = Counter()  # by the class answered
    ungradable: Counter[str] = Counter()  # by the clinician's label
    for tally in tallies:
        if tally.gradable is False:
            ungradable[tally.actual] += tally.count
            continue
        counts[(tally.actual, tally.predicted)] += tally.count
        if tally.confident and tally.actual != tally.predicted:
            contradicted[tally.predicted] += tally.count
    with_feedback = sum(t.count for t in tallies)
    answered = sum(counts.values())
    agreed = sum(n for (actual, predicted), n in counts.items() if actual == predicted)
    return WindowPerformance(
        start=start,
        end=end,
        predictions=predictions,
        with_feedback=with_feedback,
        feedback_coverage=with_feedback / predictions if predictions else None,
        answered_with_feedback=answered,
        agreement=_interval(wilson(agreed, answered)),
        contradicted_confident=sum(contradicted.values()),
        classes=_class_figures(counts, contradicted, class_names),
        ungradable=UngradableOut(
            with_feedback=sum(ungradable.values()), by_feedback_label=dict(sorted(ungradable.items()))
        ),
    )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def summarise(
    data: FeedbackData,
    *,
    confident_threshold: float,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: Bucket | None = None,
) -> PerformanceReport:
    tallies: dict[tuple[ModelKey, date | None], list[FeedbackTally]] = defaultdict(list)
    for tally in data.tallies:
        tallies[(tally.model, tally.bucket)].append(tally)
    totals: dict[ModelKey, dict[date | None, int]] = defaultdict(dict)
    for total in data.totals:
        totals[total.model][total.bucket] = total.predictions
    models = []
    for key in sorted(totals):
        names = data.class_names.get(key, ())
        per_bucket = totals[key]
        everything = [t for (model, _), items in tallies.items() if model == key for t in items]
        overall = _window(since, until, sum(per_bucket.values()), everything, names)
        buckets = []
        if bucket is not None:
            for start in sorted(b for b in per_bucket if b is not None):
                end = bucket_end(start, bucket)
                buckets.append(
                    _window(
                        _midnight(start),
                        _midnight(end),
                        per_bucket[start],
                        tallies.get((key, start), []),
                        names,
                    )
                )
        models.append(
            ModelPerformance(
                model=ModelIdentity(name=key.name, version=key.version, sha256=key.sha256),
                class_names=list(names),
                overall=overall,
                buckets=buckets,
            )
        )
    return PerformanceReport(
        since=since, until=until, bucket=bucket, confident_threshold=confident_threshold, models=models
    )


def load_performance(
    session: Session,
    *,
    confident_threshold: float,
    since: datetime | None = None,
    until: datetime | None = None,
    model_sha256: str | None = None,
    bucket: Bucket | None = None,
) -> PerformanceReport:
    """Count in the database, then compute: what the route and the report command both call."""
    data = feedback_data(
        session,
        confident_threshold=confident_threshold,
        since=since,
        until=until,
        model_sha256=model_sha256,
        bucket=bucket,
    )
    return summarise(data, confident_threshold=confident_threshold, since=since, until=until, bucket=bucket)
