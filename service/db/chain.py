"""The hash chain over predictions, and the one way rows get into that table.

Row n stores ``prev_hash`` = row n-1's ``row_hash`` and ``row_hash`` = HMAC-SHA256(prev_hash +
canonical content of row n, its sequence included) under a key derived from the audit key
(service/audit_key.py). Changing, removing or reordering any row breaks the link after it, which
``service.db.audit.verify`` reports.

The key is why the service's runtime role, which may INSERT, still cannot extend the chain: a row it
appends without the key file cannot carry a valid link. The database never sees the key. Rows written
before revision 0006 used the unkeyed rule (sha256 of the same bytes), which anyone could compute;
they stay as they are and verify under that rule. Revision 0006 opened the keyed epoch: the table
chain_epochs, which only the owner writes, says from which sequence on every link must be keyed, and
each row names the rule it claims (``link_rule``), so an unkeyed row after that point is reported as
what it is. The column has no default on PostgreSQL: a service older than 0006, which inserts
without it, fails (and spools) rather than append unkeyed rows into the keyed epoch.

Several processes (uvicorn workers, replicas) append at once, so reading the last link and writing
the next must be one critical section: a transaction-scoped advisory lock on PostgreSQL, SQLite's
database write lock (BEGIN IMMEDIATE) on SQLite. Inside it the append also skips ids already present,
which makes replaying the spool idempotent (the "insert ... on conflict do nothing" of the spec, done
before numbering so a skipped row never leaves a hole in the chain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select, text

from service.audit_key import AuditKey
from service.db.rows import canonical_bytes
from service.db.tables import Prediction

__all__ = [
    "CHAIN_LOCK_KEY",
    "GENESIS_HASH",
    "KEYED_RULE",
    "UNKEYED_RULE",
    "Appended",
    "ChainLink",
    "append_predictions",
    "chain_head",
    "chain_transaction",
    "keyed_link_hash",
    "unkeyed_link_hash",
]

GENESIS_HASH = "0" * 64
# The values of predictions.link_rule (and chain_epochs.rule); alembic/versions/0006 spells them too.
UNKEYED_RULE = "sha256"  # rows from before revision 0006
KEYED_RULE = "hmac-sha256"  # every row from the keyed epoch on
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


def _link_message(prev_hash: str, row: dict[str, Any]) -> bytes:
    return prev_hash.encode() + b"\n" + canonical_bytes(row)


def unkeyed_link_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The rule of rows written before revision 0006: only verified, never written any more."""
    return hashlib.sha256(_link_message(prev_hash, row)).hexdigest()


def keyed_link_hash(key: AuditKey, prev_hash: str, row: dict[str, Any]) -> str:
    return key.chain_link_mac(_link_message(prev_hash, row))


def append_predictions(
    engine: Engine, rows: Sequence[dict[str, Any]], *, key: AuditKey, new_ids: bool = False
) -> Appended:
    """Chain ``rows`` under ``key`` and insert them in one transaction; rows whose id is already
    stored are skipped. Returns how many rows were inserted and the link of the last one. Raises
    SQLAlchemy errors when the database is unreachable (or not migrated to revision 0006).

    ``new_ids=True`` is the caller's promise that no row's id can be stored yet (ids generated for
    requests being answered now, never a replay): the lookup of stored ids is skipped. A replay (the
    spool) must leave it False, so that rows a lost commit acknowledgement spooled are not doubled."""
    if not rows:
        return Appended(0, None)
    with chain_transaction(engine, CHAIN_LOCK_KEY) as conn:
        fresh = _unique(rows) if new_ids else _without_stored(conn, rows)
        if not fresh:
            return Appended(0, None)
        sequence, prev_hash = chain_head(conn, predictions) or (0, GENESIS_HASH)
        chained = []
        for row in fresh:
            sequence += 1
            linked = {**row, "sequence": sequence, "prev_hash": prev_hash, "link_rule": KEYED_RULE}
            linked["row_hash"] = prev_hash = keyed_link_hash(key, prev_hash, linked)
            chained.append(linked)
        conn.execute(insert(predictions), chained)
        return Appended(len(chained), ChainLink(sequence, prev_hash))


@contextmanager
def chain_transaction(engine: Engine, lock_key: int) -> Iterator[Connection]:
    """One transaction in which a chain's newest link is read and the next appended, alone: under the
    chain's advisory lock on PostgreSQL, SQLite's write lock (BEGIN IMMEDIATE) on SQLite. The
    predictions chain and the ledgers (service/db/ledger.py) each have a lock key of their own."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            yield conn


def chain_head(conn: Connection, table: Table) -> tuple[int, str] | None:
    """A chained table's newest (sequence, row_hash); None while it is empty."""
    last = conn.execute(
        select(table.c.sequence, table.c.row_hash).order_by(table.c.sequence.desc()).limit(1)
    ).first()
    return (last.sequence, last.row_hash) if last else None


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
