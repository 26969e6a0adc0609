"""Ledgers: append-only tables chained like the predictions, with the audit key from their first row.

The model lifecycle keeps two (revision 0008): shadow_results, a candidate's results beside the
predictions it shadowed, and model_events, the promotions and rollbacks of the serving student. Row n
stores ``prev_hash`` = row n-1's ``row_hash`` and ``row_hash`` = HMAC(prev_hash + canonical content
of row n, its sequence included) under the audit key's chain-link key (service/audit_key.py), so the
runtime role, which may INSERT, cannot append a row that verifies without the key file, and a changed,
removed or reordered row breaks the link after it. Each ledger numbers its rows under an advisory lock
of its own (SQLite: the database write lock), as the predictions chain does (service/db/chain.py).
There are no unkeyed epochs here: these tables were keyed from their start.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, insert, select

from service.audit_key import AuditKey
from service.db.chain import GENESIS_HASH, chain_head, chain_transaction
from service.db.rows import utc
from service.db.tables import ModelEvent, ShadowResult

__all__ = ["LEDGERS", "Ledger", "LedgerReport", "append", "verify_ledger"]

_LINK_FIELDS = ("prev_hash", "row_hash")
_FETCH_CHUNK = 1000


@dataclass(frozen=True)
class Ledger:
    table: Table
    lock_key: int  # names this ledger among advisory locks (the predictions chain has its own)

    @property
    def name(self) -> str:
        return self.table.name


SHADOW_RESULTS = Ledger(ShadowResult.__table__, 0x6B646F6374_01)
MODEL_EVENTS = Ledger(ModelEvent.__table__, 0x6B646F6374_02)
LEDGERS = (SHADOW_RESULTS, MODEL_EVENTS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return utc(value).isoformat(timespec="microseconds")
    return value


def canonical_bytes(ledger: Ledger, row: Mapping[str, Any]) -> bytes:
    """What a row's link covers: every column but the links, the same bytes before the insert and
    after reading it back from either database (uuids as text, datetimes as UTC ISO 8601)."""
    content = {
        column.name: _jsonable(row[column.name])
        for column in ledger.table.columns
        if column.name not in _LINK_FIELDS
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def link_hash(key: AuditKey, ledger: Ledger, prev_hash: str, row: Mapping[str, Any]) -> str:
    return key.chain_link_mac(
        ledger.name.encode() + b"\n" + prev_hash.encode() + b"\n" + canonical_bytes(ledger, row)
    )


def append(
    engine: Engine,
    ledger: Ledger,
    rows: Sequence[dict[str, Any]],
    *,
    key: AuditKey,
    check_last: Callable[[int | None], None] | None = None,
) -> int:
    """Number, link and insert ``rows`` (each with every column but sequence and the links) in one
    transaction; returns the sequence of the last. ``check_last`` is given the newest sequence (None
    when the ledger is empty) inside the transaction and may raise to refuse the append. Raises
    SQLAlchemy errors when the database is unreachable or not migrated to revision 0008."""
    with chain_transaction(engine, ledger.lock_key) as conn:
        head = chain_head(conn, ledger.table)
        if check_last is not None:
            check_last(head[0] if head else None)
        sequence, prev_hash = head or (0, GENESIS_HASH)
        linked = []
        for row in rows:
            sequence += 1
            values = {
                **row,
                "sequence": sequence,
                "created_at": utc(row["created_at"]),
                "prev_hash": prev_hash,
            }
            values["row_hash"] = prev_hash = link_hash(key, ledger, prev_hash, values)
            linked.append(values)
        if linked:
            conn.execute(insert(ledger.table), linked)
        return sequence


@dataclass(frozen=True)
class LedgerReport:
    name: str
    rows_checked: int
    broken_at: int | None = None  # the sequence of the first row that does not follow
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_ledger(engine: Engine, ledger: Ledger, key: AuditKey) -> LedgerReport:
    """Walk ``ledger`` in sequence order and stop at the first row that does not follow from the one
    before it: a gap in the sequence, another predecessor, content that does not match its keyed link.
    A ledger's newest rows are not anchored outside the database (the predictions' checkpoints are):
    rows cut from its end go unnoticed here."""
    table = ledger.table
    expected_prev, expected_sequence, checked = GENESIS_HASH, 1, 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=_FETCH_CHUNK).execute(
            select(table).order_by(table.c.sequence)
        )
        try:
            for row in result.mappings():
                reason = None
                if row["sequence"] != expected_sequence:
                    reason = f"sequence {row['sequence']} follows {expected_sequence - 1}: rows missing"
                elif row["prev_hash"] != expected_prev:
                    reason = (
                        "prev_hash does not match the previous row's hash: previous row altered or removed"
                    )
                elif row["row_hash"] != link_hash(key, ledger, row["prev_hash"], row):
                    reason = (
                        "row content does not match its keyed hash: row altered, or written without the key"
                    )
                if reason is not None:
                    return LedgerReport(ledger.name, checked, row["sequence"], reason)
                checked += 1
                expected_prev, expected_sequence = row["row_hash"], row["sequence"] + 1
        finally:
            result.close()
    return LedgerReport(ledger.name, checked)
