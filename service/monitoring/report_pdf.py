"""The monthly real-world performance report for the clinical safety officer, as a PDF (fpdf2, plots
drawn with matplotlib's Agg backend): per model, the month's figures per class with their Wilson 95 %
intervals, the contradicted confident answers, the ungradable predictions apart, the feedback coverage,
a plot of the per-class figures with their intervals and the weekly trend; the command that made it and
the period it covers on the first page. Page content is left uncompressed: its text stays searchable in
the bytes. Built from a PerformanceReport (service/monitoring/summary.py) alone: no database here.
"""

from __future__ import annotations

import io
from datetime import datetime

from fpdf import FPDF

from service.monitoring.summary import IntervalOut, ModelPerformance, PerformanceReport, WindowPerformance

__all__ = ["DOCUMENT_TITLE", "format_interval", "render_report"]

DOCUMENT_TITLE = "kdoct real-world performance report"
RULES = (
    "How the figures are made (docs/RECORDS.md, 'Real-world performance'): only predictions with clinician "
    "feedback count, and of each only its latest feedback. Each class is scored one against the rest: "
    "sensitivity = TP / (TP + FN), specificity = TN / (TN + FP), PPV = TP / (TP + FP), each with its Wilson "
    "score 95 % interval; '-' where there was nothing to count. Predictions the safety gate found ungradable "
    "were referred, not answered: they are listed apart and left out of the class figures. A confident "
    "answer has a calibrated confidence at or above the threshold below; feedback naming another class "
    "contradicts it. "
    "Feedback coverage = predictions with feedback / predictions made."
)
_COLUMNS = (
    "Class",
    "Cases",
    "Answered",
    "TP",
    "FN",
    "FP",
    "TN",
    "Sensitivity",
    "Specificity",
    "PPV",
    "Contra-\ndicted",
)
_WIDTHS = (16, 12, 15, 8, 8, 8, 8, 31, 31, 31, 12)
_WEEK_COLUMNS = ("Week from (Mon)", "Predictions", "With feedback", "Coverage", "Agreement", "Contradicted")
_WEEK_WIDTHS = (30, 22, 26, 20, 60, 22)


def format_interval(interval: IntervalOut) -> str:
    """'66.7 % (20.8-93.9)', or '-' when there were no trials."""
    if interval.value is None:
        return "-"
    return f"{interval.value * 100:.1f} % ({interval.low * 100:.1f}-{interval.high * 100:.1f})"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _latin1(text: str) -> str:
    # fpdf2's core fonts are latin-1: a custom model name or class outside it prints '?' instead of failing.
    return text.encode("latin-1", "replace").decode("latin-1")


def _line(pdf: FPDF, text: str, *, size: float = 10, style: str = "") -> None:
    pdf.set_font("Helvetica", style, size)
    pdf.multi_cell(0, size * 0.5, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def _heading(pdf: FPDF, text: str, size: float = 13) -> None:
    pdf.ln(3)
    _line(pdf, text, size=size, style="B")
    pdf.ln(1)


def _table(pdf: FPDF, columns, widths, rows, size: float = 8) -> None:
    pdf.set_font("Helvetica", "", size)
    with pdf.table(col_widths=widths, width=sum(widths), text_align="LEFT") as table:
        for cells in [columns, *rows]:
            row = table.row()
            for cell in cells:
                row.cell(_latin1(str(cell)))


def _figure_png(figure) -> io.BytesIO:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    buffer.seek(0)
    return buffer


def _whiskers(interval: IntervalOut) -> tuple[float, float, float]:
    """(value, below, above) for an error bar; NaN when there is no figure (nothing is drawn)."""
    if interval.value is None:
        return float("nan"), 0.0, 0.0
    return interval.value, interval.value - interval.low, interval.high - interval.value


def _class_plot(window: WindowPerformance) -> io.BytesIO:
    from matplotlib.figure import Figure  # Agg, without pyplot's global state: safe in any process

    figure = Figure(figsize=(7.5, 2.8))
    axes = figure.subplots()
    names = [c.name for c in window.classes]
    for offset, (label, pick, marker) in enumerate(
        (
            ("sensitivity", lambda c: c.sensitivity, "o"),
            ("specificity", lambda c: c.specificity, "s"),
            ("PPV", lambda c: c.ppv, "^"),
        )
    ):
        points = [_whiskers(pick(c)) for c in window.classes]
        xs = [i + (offset - 1) * 0.22 for i in range(len(names))]
        axes.errorbar(
            xs,
            [p[0] for p in points],
            yerr=[[p[1] for p in points], [p[2] for p in points]],
            fmt=marker,
            capsize=4,
            label=label,
        )
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("proportion (95 % CI)")
    axes.set_title("Per class, this month (Wilson 95 % intervals)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _figure_png(figure)


def _trend_plot(weeks: list[WindowPerformance]) -> io.BytesIO:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 2.8))
    axes = figure.subplots()
    labels = [f"{w.start:%m-%d}" for w in weeks]
    xs = list(range(len(weeks)))
    points = [_whiskers(w.agreement) for w in weeks]
    axes.errorbar(
        xs,
        [p[0] for p in points],
        yerr=[[p[1] for p in points], [p[2] for p in points]],
        fmt="o-",
        capsize=4,
        label="agreement with feedback",
    )
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("agreement (95 % CI)")
    axes.set_xticks(xs, labels)
    axes.set_xlabel("week from Monday")
    counts = axes.twinx()
    counts.bar(
        xs,
        [w.contradicted_confident for w in weeks],
        width=0.3,
        alpha=0.35,
        color="red",
        label="contradicted confident answers",
    )
    counts.set_ylabel("contradicted confident")
    counts.set_ylim(0, max(1, *(w.contradicted_confident for w in weeks)) * 1.5)
    axes.set_zorder(counts.get_zorder() + 1)  # the line over the bars
    axes.patch.set_visible(False)
    counts.yaxis.get_major_locator().set_params(integer=True)
    axes.set_title("Weekly trend")
    handles = axes.get_legend_handles_labels()[0] + counts.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="lower left", fontsize=8)
    return _figure_png(figure)


def _model(pdf: FPDF, item: ModelPerformance, threshold: float) -> None:
    model, month = item.model, item.overall
    _heading(pdf, f"Model {model.name} {model.version}")
    _line(pdf, f"bundle sha256 {model.sha256}", size=8)
    pdf.ln(1)
    coverage = _share(month.feedback_coverage)
    _line(
        pdf,
        f"Predictions made: {month.predictions}; with feedback: {month.with_feedback} (coverage {coverage})",
    )
    if month.with_feedback == 0:
        _line(pdf, "No clinician feedback on this model's predictions of this month: no figures.", style="B")
        return
    _line(
        pdf,
        f"Answered (not ungradable) with feedback: {month.answered_with_feedback}; agreement "
        f"{format_interval(month.agreement)}",
    )
    contradicted = month.contradicted_confident
    _line(pdf, f"Contradicted confident answers (confidence >= {threshold:.2f}): {contradicted}", style="B")
    ungradable = month.ungradable
    labels = ", ".join(f"{label} {n}" for label, n in ungradable.by_feedback_label.items()) or "none"
    _line(
        pdf,
        f"Ungradable (referred, not in the figures) with feedback: {ungradable.with_feedback}; "
        f"clinicians' labels: {labels}",
    )
    pdf.ln(2)
    rows = [
        (
            c.name,
            c.tp + c.fn,
            c.tp + c.fp,
            c.tp,
            c.fn,
            c.fp,
            c.tn,
            format_interval(c.sensitivity),
            format_interval(c.specificity),
            format_interval(c.ppv),
            c.contradicted_confident,
        )
        for c in month.classes
    ]
    _table(pdf, _COLUMNS, _WIDTHS, rows, size=7)
    _line(
        pdf,
        "Cases: feedback says the class; Answered: the model said it; Contradicted: confident answers of "
        "the class whose feedback names another.",
        size=7,
    )
    if month.answered_with_feedback:
        pdf.image(_class_plot(month), w=180)
    if item.buckets:
        _heading(pdf, "Per week (ISO weeks from Monday; only this month's predictions count)", size=10)
        week_rows = [
            (
                f"{w.start:%Y-%m-%d}",
                w.predictions,
                w.with_feedback,
                _share(w.feedback_coverage),
                format_interval(w.agreement),
                w.contradicted_confident,
            )
            for w in item.buckets
        ]
        _table(pdf, _WEEK_COLUMNS, _WEEK_WIDTHS, week_rows)
        pdf.image(_trend_plot(item.buckets), w=180)


def render_report(report: PerformanceReport, *, period: str, command: str, generated_at: datetime) -> bytes:
    """The PDF for ``report`` (one period, weekly buckets): A4, uncompressed page content."""
    pdf = FPDF(format="A4")
    pdf.set_compression(False)
    pdf.set_creation_date(generated_at)
    pdf.set_title(f"{DOCUMENT_TITLE} {period}")
    pdf.set_author("kdoct")
    pdf.set_margins(15, 15, 15)
    pdf.add_page()
    _line(pdf, f"{DOCUMENT_TITLE}: {period}", size=17, style="B")
    pdf.ln(1)
    _line(
        pdf, "For the clinical safety officer: performance of the deployed models against clinician feedback."
    )
    since = f"{report.since:%Y-%m-%d %H:%M}" if report.since else "the first record"
    until = f"{report.until:%Y-%m-%d %H:%M}" if report.until else "the last record"
    _line(pdf, f"Data period: predictions made from {since} UTC (inclusive) to {until} UTC (exclusive)")
    _line(
        pdf,
        f"Confident answer: calibrated confidence >= {report.confident_threshold:.2f} "
        "(KDOCT_SECOND_OPINION_THRESHOLD)",
    )
    _line(pdf, f"Generated at {generated_at:%Y-%m-%d %H:%M:%S} UTC by: {command}", size=8)
    pdf.ln(1)
    _line(pdf, RULES, size=8)
    if not report.models:
        _heading(pdf, "No predictions were made in this period: nothing to report.")
    elif not any(m.overall.with_feedback for m in report.models):
        _heading(pdf, "No clinician feedback on the predictions of this period: no figures.")
    for item in report.models:
        _model(pdf, item, report.confident_threshold)
    return bytes(pdf.output())
