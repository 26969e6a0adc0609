"""Verify the predictions hash chain, and the chain checkpoints kept outside the database, and report
the first broken link.

Which rule a row's link must follow is fixed by its sequence and the chain epochs (service/db/chain.py):
unkeyed before the keyed epoch, keyed with the audit key from it on. Without the key the keyed links
cannot be checked: the walk still checks their order and their claims, and the report says how many
links it could not verify, so that a check without the key never passes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from service.audit_key import AuditKey
from service.db.anchor import Checkpoint
from service.db.chain import GENESIS_HASH, KEYED_RULE, UNKEYED_RULE, keyed_link_hash, unkeyed_link_hash
from service.db.tables import ChainEpoch, Prediction

__all__ = ["AuditReport", "BrokenLink", "verify"]

_FETCH_CHUNK = 1000


@dataclass(frozen=True)
class BrokenLink:
    sequence: int
    prediction_id: str | None  # None where the row is missing altogether (a truncated tail)
    reason: str


@dataclass(frozen=True)
class AuditReport:
    rows_checked: int  # rows whose link was checked in full, up to the first broken one
    broken: BrokenLink | None
    checkpoints_checked: int = 0
    # Keyed links whose order and claim were checked but not their hash, for want of the audit key,
    # and the first of them.
    unverified: int = 0
    first_unverified: int | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None and self.unverified == 0


@dataclass(frozen=True)
class _Epochs:
    """first sequence -> rule, in order; before the first epoch the rule is the unkeyed one."""

    starts: list[int]
    rules: list[str]

    def rule(self, sequence: int) -> str:
        index = bisect.bisect_right(self.starts, sequence) - 1
        return self.rules[index] if index >= 0 else UNKEYED_RULE

    def keyed_from(self) -> int | None:
        return next((s for s, r in zip(self.starts, self.rules, strict=True) if r == KEYED_RULE), None)


def _epochs(conn: Connection) -> _Epochs:
    rows = conn.execute(
        select(ChainEpoch.first_sequence, ChainEpoch.rule).order_by(ChainEpoch.first_sequence)
    )
    pairs = list(rows)
    return _Epochs([start for start, _ in pairs], [rule for _, rule in pairs])


def verify(
    engine: Engine, checkpoints: Iterable[Checkpoint] = (), *, key: AuditKey | None = None
) -> AuditReport:
    """Walk the chain in sequence order; stop at the first row that does not follow from the one
    before it (altered content, altered or missing predecessor, a gap in the sequence, a link that
    does not follow the rule of its epoch) or that differs from a checkpoint of its position. Then
    every checkpoint must have found its row: one beyond the chain's end means rows were removed from
    the end. Without ``key`` keyed links are counted as unverified, and the report is not ok."""
    anchored: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        anchored.setdefault(checkpoint.sequence, []).append(checkpoint)
    table = Prediction.__table__
    expected_prev, expected_sequence, checked = GENESIS_HASH, 1, 0
    unverified, first_unverified = 0, None
    with engine.connect() as conn:
        epochs = _epochs(conn)
        result = conn.execution_options(yield_per=_FETCH_CHUNK).execute(
            select(table).order_by(table.c.sequence)
        )
        try:
            for row in result.mappings():
                broken = _check(row, expected_prev, expected_sequence, epochs, key) or _against(row, anchored)
                if broken:
                    return AuditReport(
                        checked, broken, _count_below(anchored, row["sequence"]), unverified, first_unverified
                    )
                if key is None and row["link_rule"] == KEYED_RULE:
                    unverified += 1
                    first_unverified = first_unverified or row["sequence"]
                else:
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
        return AuditReport(checked, broken, _count_below(anchored, last + 1), unverified, first_unverified)
    return AuditReport(
        checked, None, sum(len(found) for found in anchored.values()), unverified, first_unverified
    )


def _count_below(anchored: dict[int, list[Checkpoint]], sequence: int) -> int:
    return sum(len(found) for position, found in anchored.items() if position < sequence)


def _check(row, expected_prev: str, expected_sequence: int, epochs: _Epochs, key: AuditKey | None):
    def broken(reason: str) -> BrokenLink:
        return BrokenLink(sequence=row["sequence"], prediction_id=str(row["id"]), reason=reason)

    if row["sequence"] != expected_sequence:
        return broken(f"sequence {row['sequence']} follows {expected_sequence - 1}: rows missing")
    if row["prev_hash"] != expected_prev:
        return broken("prev_hash does not match the previous row's hash: previous row altered or removed")
    rule, claimed, values = epochs.rule(row["sequence"]), row["link_rule"], dict(row)
    if rule == UNKEYED_RULE:
        if claimed != UNKEYED_RULE:
            keyed_from = epochs.keyed_from()
            where = (
                f"the keyed epoch begins at {keyed_from}" if keyed_from else "the chain has no keyed epoch"
            )
            return broken(f"claims the {claimed!r} link rule, but {where}: chain epochs altered")
        if row["row_hash"] != unkeyed_link_hash(row["prev_hash"], values):
            return broken("row content does not match its hash: row altered")
        return None
    if rule != KEYED_RULE:
        return broken(f"its chain epoch names the unknown link rule {rule!r}: chain epochs altered")
    if claimed != KEYED_RULE:
        return broken(
            f"claims the {claimed!r} link rule, but every link from sequence {epochs.keyed_from()} on is "
            "keyed with the audit key: a row appended without the key (forged, or by a service older "
            "than revision 0006)"
        )
    if key is None:
        return None  # counted as unverified by the caller
    if row["row_hash"] == keyed_link_hash(key, row["prev_hash"], values):
        return None
    if row["row_hash"] == unkeyed_link_hash(row["prev_hash"], values):
        return broken("its link follows the unkeyed rule, not the audit key: a row appended without the key")
    return broken(
        "row content does not match its keyed hash: row altered, or chained under another audit key"
    )


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
