"""Verify the predictions hash chain and report the first broken link."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from service.db.chain import GENESIS_HASH, link_hash
from service.db.models import Prediction

__all__ = ["AuditReport", "BrokenLink", "verify"]

_FETCH_CHUNK = 1000


@dataclass(frozen=True)
class BrokenLink:
    sequence: int
    prediction_id: str
    reason: str


@dataclass(frozen=True)
class AuditReport:
    rows_checked: int
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(engine: Engine) -> AuditReport:
    """Walk the chain in sequence order; stop at the first row that does not follow from the one
    before it (altered content, altered or missing predecessor, a gap in the sequence)."""
    table = Prediction.__table__
    expected_prev, expected_sequence, checked = GENESIS_HASH, 1, 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=_FETCH_CHUNK).execute(
            select(table).order_by(table.c.sequence)
        )
        try:
            for row in result.mappings():
                broken = _check(row, expected_prev, expected_sequence)
                if broken:
                    return AuditReport(rows_checked=checked, broken=broken)
                checked += 1
                expected_prev, expected_sequence = row["row_hash"], row["sequence"] + 1
        finally:
            result.close()  # a server-side cursor when stopping early
    return AuditReport(rows_checked=checked, broken=None)


def _check(row, expected_prev: str, expected_sequence: int) -> BrokenLink | None:
    def broken(reason: str) -> BrokenLink:
        return BrokenLink(sequence=row["sequence"], prediction_id=str(row["id"]), reason=reason)

    if row["sequence"] != expected_sequence:
        return broken(f"sequence {row['sequence']} follows {expected_sequence - 1}: rows missing")
    if row["prev_hash"] != expected_prev:
        return broken("prev_hash does not match the previous row's hash: previous row altered or removed")
    if row["row_hash"] != link_hash(row["prev_hash"], dict(row)):
        return broken("row content does not match its hash: row altered")
    return None
