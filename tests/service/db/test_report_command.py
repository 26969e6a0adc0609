"""`python -m service report --month`: the monthly PDF for the clinical safety officer, from a database
(SQLite and PostgreSQL) holding rows whose figures are worked out by hand (kdoct_testing/feedback.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdoct_testing.feedback import store_known_feedback
from service.__main__ import main
from service.db.session import make_engine


def _in_pdf(pdf: bytes, text: str) -> bool:
    """Whether the text is in a string of the (uncompressed) page content, as PDF escapes it."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return escaped.encode("latin-1") in pdf


@pytest.fixture
def known_url(db_url: str) -> str:
    engine = make_engine(db_url)
    store_known_feedback(engine)
    engine.dispose()
    return db_url


def test_the_december_report_holds_the_figures_worked_by_hand(known_url, tmp_path: Path, capsys) -> None:
    out = tmp_path / "december.pdf"
    assert main(["report", "--month", "2026-12", "--database-url", known_url, "--out", str(out)]) == 0
    assert f"wrote {out}: 2 model(s), 8 prediction(s) with feedback in 2026-12" in capsys.readouterr().out
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    expected = [
        "kdoct real-world performance report: 2026-12",
        "Data period: predictions made from 2026-12-01 00:00 UTC (inclusive) to 2027-01-01 00:00 UTC "
        "(exclusive)",
        "python -m service report --month 2026-12",
        "Confident answer: calibrated confidence >= 0.80",
        "Model kdoct-student 0.1.0", "Model kdoct-student 0.2.0", "bundle sha256 " + "a" * 64,
        # Model A: 8 predictions, 7 with feedback, 6 answered (row 6 ungradable), 4 of them right.
        "Predictions made: 8; with feedback: 7 (coverage 87.5 %)",
        "Answered (not ungradable) with feedback: 6; agreement 66.7 % (30.0-90.3)",
        "Contradicted confident answers (confidence >= 0.80): 1",
        "Ungradable (referred, not in the figures) with feedback: 1; clinicians' labels: cnv 1",
        # normal: sensitivity 2/2, specificity 3/4, PPV 2/3; drusen: sensitivity 1/3 (Wilson by hand).
        "100.0 % (34.2-100.0)", "75.0 % (30.1-95.4)", "66.7 % (20.8-93.9)", "33.3 % (6.1-79.2)",
        # Weekly: the week from Monday 2026-11-30 (its December days) and the next.
        "2026-11-30", "2026-12-07",
        # Model B: one answer, right; one without feedback.
        "Predictions made: 2; with feedback: 1 (coverage 50.0 %)",
    ]  # fmt: skip
    missing = [text for text in expected if not _in_pdf(pdf, text)]
    assert missing == []
    assert pdf.count(b"/Subtype /Image") >= 3  # per-class figures and the weekly trend (model B: no trend)


def test_a_month_without_feedback_says_so(known_url, tmp_path: Path) -> None:
    out = tmp_path / "october.pdf"
    assert main(["report", "--month", "2026-10", "--database-url", known_url, "--out", str(out)]) == 0
    pdf = out.read_bytes()
    assert _in_pdf(pdf, "No predictions were made in this period: nothing to report.")
    assert b"/Subtype /Image" not in pdf
    # November: one prediction, with feedback; a stricter threshold: its contradiction is not confident.
    out = tmp_path / "november.pdf"
    argv = ["report", "--month", "2026-11", "--database-url", known_url, "--out", str(out)]
    assert main([*argv, "--confident-threshold", "0.95"]) == 0
    pdf = out.read_bytes()
    assert _in_pdf(pdf, "Contradicted confident answers (confidence >= 0.95): 0")
    assert _in_pdf(pdf, "--confident-threshold 0.95")


def test_predictions_without_feedback_give_a_clear_pdf(sqlite_url, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from kdoct_testing.chain import CHAIN_KEY
    from kdoct_testing.records import make_record
    from service.db.chain import append_predictions
    from service.db.rows import normalise_row

    engine = make_engine(sqlite_url)
    append_predictions(
        engine, [normalise_row(make_record(created_at=datetime(2026, 9, 3, tzinfo=UTC)))], key=CHAIN_KEY
    )
    engine.dispose()
    out = tmp_path / "september.pdf"
    assert main(["report", "--month", "2026-09", "--database-url", sqlite_url, "--out", str(out)]) == 0
    pdf = out.read_bytes()
    assert _in_pdf(pdf, "No clinician feedback on the predictions of this period: no figures.")
    assert _in_pdf(pdf, "Predictions made: 1; with feedback: 0 (coverage 0.0 %)")


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "12-2026", "2026-1", "december", "0000-01"])
def test_a_bad_month_is_a_usage_error(month, sqlite_url, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never.pdf"
    assert main(["report", "--month", month, "--database-url", sqlite_url, "--out", str(out)]) == 2
    assert f"'{month}' is not a month: write YYYY-MM" in capsys.readouterr().err
    assert not out.exists()


def test_a_database_without_the_schema_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(SystemExit, match="db upgrade"):
        main(["report", "--month", "2026-12", "--database-url", url, "--out", str(tmp_path / "x.pdf")])


@pytest.mark.parametrize("threshold", ["0", "1.5", "high"])
def test_a_bad_threshold_is_a_usage_error(threshold, sqlite_url, tmp_path: Path, capsys) -> None:
    argv = ["report", "--month", "2026-12", "--database-url", sqlite_url, "--out", str(tmp_path / "x.pdf")]
    assert main([*argv, "--confident-threshold", threshold]) == 2
    assert "give a confidence in (0, 1]" in capsys.readouterr().err


def test_a_bad_configured_threshold_is_a_clear_error(sqlite_url, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KDOCT_SECOND_OPINION_THRESHOLD", "2")
    argv = ["report", "--month", "2026-12", "--database-url", sqlite_url, "--out", str(tmp_path / "x.pdf")]
    assert main(argv) == 2
    assert (
        "error: KDOCT_SECOND_OPINION_THRESHOLD: Input should be less than or equal to 1"
        in capsys.readouterr().err
    )
    monkeypatch.setenv("KDOCT_SECOND_OPINION_THRESHOLD", "0.9")
    assert main(argv) == 0
    assert _in_pdf((tmp_path / "x.pdf").read_bytes(), "Confident answer: calibrated confidence >= 0.90")
