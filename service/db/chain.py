"""The hash chain over predictions, and the one way rows get into that table.

Row n stores ``prev_hash`` = row n-1's ``row_hash`` and ``row_hash`` = sha256(prev_hash + canonical
content of row n, its sequence included). Changing, removing or reordering any row breaks the link
after it, which ``service.db.audit.verify`` reports.

Several processes (uvicorn workers, replicas) append at once, so reading the last link and writing
the next must be one critical section: a transaction-scoped advisory lock on PostgreSQL, SQLite's
database write lock (BEGIN IMMEDIATE) on SQLite. Inside it the append also skips ids already present,
which makes replaying the spool idempotent (the "insert ... on conflict do nothing" of the spec, done
before numbering so a skipped row never leaves a hole in the chain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text

from service.db.models import Prediction
from service.db.rows import canonical_bytes

__all__ = ["CHAIN_LOCK_KEY", "GENESIS_HASH", "Appended", "ChainLink", "append_predictions", "link_hash"]

GENESIS_HASH = "0" * 64
# Any fixed 64-bit number; it names "the predictions chain" among advisory locks.
CHAIN_LOCK_KEY = 0x6B646F6374  # "kdoct"
_ID_LOOKUP_CHUNK = 500

predictions = Prediction.__table__


@dataclass(frozen=True, order=True)
class ChainLink:
    """One position of the chain: what a checkpoint anchors (service/db/anchor.py)."""

    sequence: int
    row_hash: str


@dataclass(frozen=True)
class Appended:
    count: int  # rows inserted (ids already stored are skipped)
    head: ChainLink | None  # the last row inserted; None when nothing was


def link_hash(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical_bytes(row)).hexdigest()


def append_predictions(engine: Engine, rows: Sequence[dict[str, Any]], *, new_ids: bool = False) -> Appended:
    """Chain and insert ``rows`` in one transaction; rows whose id is already stored are skipped.
    Returns how many rows were inserted and the link of the last one. Raises SQLAlchemy errors when
    the database is unreachable.

    ``new_ids=True`` is the caller's promise that no row's id can be stored yet (ids generated for
    requests being answered now, never a replay): the lookup of stored ids is skipped. A replay (the
    spool) must leave it False, so that rows a lost commit acknowledgement spooled are not doubled."""
    if not rows:
        return Appended(0, None)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
            fresh = _unique(rows) if new_ids else _without_stored(conn, rows)
            if not fresh:
                return Appended(0, None)
            last = conn.execute(
                select(predictions.c.sequence, predictions.c.row_hash)
                .order_by(predictions.c.sequence.desc())
                .limit(1)
            ).first()
            sequence, prev_hash = (last.sequence, last.row_hash) if last else (0, GENESIS_HASH)
            chained = []
            for row in fresh:
                sequence += 1
                linked = {**row, "sequence": sequence, "prev_hash": prev_hash}
                linked["row_hash"] = prev_hash = link_hash(prev_hash, linked)
                chained.append(linked)
            conn.execute(insert(predictions), chained)
            return Appended(len(chained), ChainLink(sequence, prev_hash))


def _unique(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    unique: dict[Any, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["id"], row)
    return list(unique.values())


def _without_stored(conn: Connection, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    unique = {row["id"]: row for row in _unique(rows)}
    ids = list(unique)
    stored: set[Any] = set()
    for start in range(0, len(ids), _ID_LOOKUP_CHUNK):
        chunk = ids[start : start + _ID_LOOKUP_CHUNK]
        stored.update(conn.scalars(select(predictions.c.id).where(predictions.c.id.in_(chunk))))
    return [row for row_id, row in unique.items() if row_id not in stored]
