"""GET /monitoring/performance: real-world performance from clinician feedback, per model and time
window (service/monitoring/summary.py says how the figures are made). Aggregates only: no prediction
is shown, so nothing is logged in prediction_reads. Scope `read`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from service.db.performance import Bucket
from service.db.rows import utc
from service.deps import ReadClientDep, RecorderDep, SessionsDep, SettingsDep
from service.monitoring.summary import PerformanceReport, load_performance
from service.problems import Problem

__all__ = ["router"]

router = APIRouter(prefix="/monitoring", tags=["monitoring"])

# The records hold years 1970 to 9998 at most; anything beyond is a typing mistake, answered 400 rather
# than passed to the database (or overflowing a bucket's end).
_EARLIEST, _LATEST = 1970, 9998


def _moment(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = utc(value)
    except (OverflowError, ValueError):
        moment = None
    if moment is None or not _EARLIEST <= moment.year <= _LATEST:
        raise Problem(
            "bad-request", f"{name} must lie between {_EARLIEST} and {_LATEST}", reason="bad_request"
        )
    return moment


@router.get(
    "/performance",
    response_model=PerformanceReport,
    summary="Real-world performance from clinician feedback, per model and time window",
)
async def performance(
    sessions: SessionsDep,
    settings: SettingsDep,
    recorder: RecorderDep,
    client: ReadClientDep,
    model_sha256: Annotated[
        str | None, Query(pattern="^[0-9a-f]{64}$", description="one model: its bundle's sha256")
    ] = None,
    since: Annotated[datetime | None, Query(description="predictions made from, inclusive, ISO 8601")] = None,
    until: Annotated[
        datetime | None, Query(description="predictions made before, exclusive, ISO 8601")
    ] = None,
    bucket: Annotated[Bucket | None, Query(description="also per day, ISO week or month (UTC)")] = None,
) -> PerformanceReport:
    since, until = _moment("since", since), _moment("until", until)
    if since is not None and until is not None and since >= until:
        raise Problem("bad-request", "since must be before until", reason="bad_request")
    threshold = settings.second_opinion_threshold
    await recorder.caught_up()

    def load() -> PerformanceReport:
        with sessions() as session:
            return load_performance(
                session,
                confident_threshold=threshold,
                since=since,
                until=until,
                model_sha256=model_sha256,
                bucket=bucket,
            )

    try:
        return await run_in_threadpool(load)
    except SQLAlchemyError:
        raise Problem(
            "not-ready",
            "the prediction database is unavailable: try again shortly",
            reason="record_unavailable",
            headers={"Retry-After": "5"},
        ) from None
