"""`python -m service report --month 2026-12 [--out FILE.pdf] [--database-url URL]`: the monthly
real-world performance report (service/monitoring/report_pdf.py) for the clinical safety officer, from
the predictions made in that month (UTC) and their clinicians' feedback. A bad --month is a usage error
(exit 2); a month without feedback still gives a PDF, which says so."""

from __future__ import annotations

import argparse
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.orm import Session

from kdoct.errors import ConfigError
from service.commands._database import add_database_option, open_engine
from service.monitoring.report_pdf import render_report
from service.monitoring.summary import load_performance

_MONTH = re.compile(r"(\d{4})-(\d{2})")


class _Threshold(BaseSettings):
    """The service's KDOCT_SECOND_OPINION_THRESHOLD (a confident answer's floor), without the rest."""

    model_config = SettingsConfigDict(env_prefix="KDOCT_", env_file=".env", extra="ignore")
    second_opinion_threshold: float = Field(0.8, gt=0.0, le=1.0)


def month(text: str) -> tuple[datetime, datetime]:
    """'2026-12' -> [2026-12-01, 2027-01-01) in UTC; argparse reports anything else (exit 2)."""
    match = _MONTH.fullmatch(text)
    year, number = (int(match[1]), int(match[2])) if match else (0, 0)
    if not match or not 1 <= number <= 12 or not 1970 <= year <= 9998:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month: write YYYY-MM, e.g. 2026-12")
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a confidence in (0, 1]")
    return value


def _configured_threshold() -> float:
    try:
        return _Threshold().second_opinion_threshold
    except ValidationError as exc:
        raise ConfigError(f"KDOCT_SECOND_OPINION_THRESHOLD: {exc.errors()[0]['msg']}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="the monthly real-world performance report (PDF) from clinician feedback",
        description="Per model and class: sensitivity, specificity and PPV with Wilson 95 %% intervals from "
        "the latest clinician feedback, contradicted confident answers, ungradable predictions apart, "
        "feedback coverage, and the weekly trend, for the predictions made in one month (UTC).",
    )
    parser.add_argument("--month", type=month, required=True, metavar="YYYY-MM", help="e.g. 2026-12")
    parser.add_argument(
        "--out", type=Path, default=None, help="the PDF to write (default: kdoct-performance-YYYY-MM.pdf)"
    )
    parser.add_argument(
        "--confident-threshold",
        type=_threshold,
        default=None,
        help="a confident answer's floor (default: KDOCT_SECOND_OPINION_THRESHOLD, else 0.8)",
    )
    add_database_option(parser)
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    since, until = args.month
    period = f"{since:%Y-%m}"
    out = args.out or Path(f"kdoct-performance-{period}.pdf")
    threshold = args.confident_threshold or _configured_threshold()
    with open_engine(args) as engine, Session(engine) as session:
        report = load_performance(
            session, confident_threshold=threshold, since=since, until=until, bucket="week"
        )
        database = engine.url.render_as_string(hide_password=True)
    # The command as it could be run again, its password never shown.
    words = ["python", "-m", "service", "report", "--month", period, "--out", str(out)]
    words += ["--confident-threshold", f"{threshold:g}", "--database-url", database]
    command = shlex.join(words)
    pdf = render_report(report, period=period, command=command, generated_at=datetime.now(UTC))
    out.write_bytes(pdf)
    feedback = sum(m.overall.with_feedback for m in report.models)
    print(f"wrote {out}: {len(report.models)} model(s), {feedback} prediction(s) with feedback in {period}")
    return 0
