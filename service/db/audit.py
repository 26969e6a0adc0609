"""Verify the predictions hash chain, and the chain checkpoints kept outside the database, and report
the first broken link."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from service.db.anchor import Checkpoint
from service.db.chain import GENESIS_HASH, link_hash
from service.db.models import Prediction

__all__ = ["AuditReport", "BrokenLink", "verify"]

_FETCH_CHUNK = 1000


@dataclass(frozen=True)
class BrokenLink:
    sequence: int
    prediction_id: str | None  # None where the row is missing altogether (a truncated tail)
    reason: str


@dataclass(frozen=True)
class AuditReport:
    rows_checked: int
    broken: BrokenLink | None
    checkpoints_checked: int = 0

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(engine: Engine, checkpoints: Iterable[Checkpoint] = ()) -> AuditReport:
    """Walk the chain in sequence order; stop at the first row that does not follow from the one
    before it (altered content, altered or missing predecessor, a gap in the sequence) or that differs
    from a checkpoint of its position. Then every checkpoint must have found its row: one beyond the
    chain's end means rows were removed from the end."""
    anchored: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        anchored.setdefault(checkpoint.sequence, []).append(checkpoint)
    table = Prediction.__table__
    expected_prev, expected_sequence, checked = GENESIS_HASH, 1, 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=_FETCH_CHUNK).execute(
            select(table).order_by(table.c.sequence)
        )
        try:
            for row in result.mappings():
                broken = _check(row, expected_prev, expected_sequence) or _against(row, anchored)
                if broken:
                    return AuditReport(checked, broken, _count_below(anchored, row["sequence"]))
                checked += 1
                expected_prev, expected_sequence = row["row_hash"], row["sequence"] + 1
        finally:
            result.close()  # a server-side cursor when stopping early
    last = expected_sequence - 1
    beyond = [sequence for sequence in anchored if sequence > last]
    if beyond:
        newest = max(anchored[max(beyond)], key=lambda checkpoint: checkpoint.at)
        reason = (
            f"truncated: the checkpoint of {newest.at} anchors sequence {newest.sequence}, the chain ends "
            f"at {last}: rows removed from its end"
        )
        broken = BrokenLink(newest.sequence, None, reason)
        return AuditReport(checked, broken, _count_below(anchored, last + 1))
    return AuditReport(checked, None, sum(len(found) for found in anchored.values()))


def _count_below(anchored: dict[int, list[Checkpoint]], sequence: int) -> int:
    return sum(len(found) for position, found in anchored.items() if position < sequence)


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


def _against(row, anchored: dict[int, list[Checkpoint]]) -> BrokenLink | None:
    for checkpoint in anchored.get(row["sequence"], ()):
        if checkpoint.row_hash != row["row_hash"]:
            return BrokenLink(
                sequence=row["sequence"],
                prediction_id=str(row["id"]),
                reason=f"differs from the checkpoint of {checkpoint.at}: the chain was rewritten from here "
                f"or before",
            )
    return None
