"""Support for tests of the predictions hash chain: an audit key for the tests' chains, the chain as
code before revision 0006 wrote it, and the forged link of an intruder without the audit key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, insert, inspect, select

from service.audit_key import AuditKey
from service.db.chain import GENESIS_HASH
from service.db.rows import canonical_bytes
from service.db.tables import Prediction

__all__ = ["CHAIN_KEY", "CHAIN_SECRET", "append_unkeyed", "has_link_rule", "unkeyed_next_link"]

# Random per test run; a test that verifies in another process hands the secret over (hex).
CHAIN_SECRET = os.urandom(32)
CHAIN_KEY = AuditKey(CHAIN_SECRET)

predictions = Prediction.__table__


def unkeyed_next_link(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` made the chain's next link under the unkeyed rule, as anyone who may SELECT the last
    row can compute it: no secret needed (and nothing of service/db/chain.py but the public genesis).
    The row is returned, not inserted."""
    last = conn.execute(
        select(predictions.c.sequence, predictions.c.row_hash)
        .order_by(predictions.c.sequence.desc())
        .limit(1)
    ).first()
    sequence, prev_hash = (last.sequence, last.row_hash) if last else (0, GENESIS_HASH)
    linked = {**row, "sequence": sequence + 1, "prev_hash": prev_hash}
    linked["row_hash"] = hashlib.sha256(prev_hash.encode() + b"\n" + canonical_bytes(linked)).hexdigest()
    return linked


def has_link_rule(conn: Connection) -> bool:
    """Whether the database is at revision 0006 or later (predictions.link_rule exists)."""
    return "link_rule" in {column["name"] for column in inspect(conn).get_columns("predictions")}


def append_unkeyed(engine: Engine, rows: Sequence[dict[str, Any]], *, claim: str = "sha256") -> None:
    """Append ``rows`` with unkeyed links: the way the service did before revision 0006 (the
    link_rule column does not exist yet), or an intruder without the audit key does after it (the
    row then claims ``claim``)."""
    with engine.begin() as conn:
        rule = has_link_rule(conn)
        for row in rows:
            linked = unkeyed_next_link(conn, row)
            if rule:
                linked["link_rule"] = claim
            conn.execute(insert(predictions), [linked])
