"""Prediction rows as plain dicts: normalised from what service.records.prediction_rows derives from
an answer, turned into JSON for the spool and back, and rendered canonically for the hash chain.

The canonical form must give the same bytes before the insert and after reading the row back from
either database, so it normalises what the databases change: datetimes to UTC ISO 8601 with
microseconds (SQLite returns them naive), uuids to their hyphenated text, JSON with sorted keys.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.db.models import Prediction

__all__ = [
    "CHAINED_FIELDS",
    "PREDICTION_FIELDS",
    "canonical_bytes",
    "normalise_row",
    "row_from_json",
    "row_to_json",
    "utc",
]

# Every column the service supplies; sequence, prev_hash, row_hash and link_rule are added by the chain.
PREDICTION_FIELDS: tuple[str, ...] = tuple(
    c.name
    for c in Prediction.__table__.columns
    if c.name not in ("sequence", "prev_hash", "row_hash", "link_rule")
)
# Columns added after the chain began: a row's hash covers them only when they hold a value, so rows
# written before their revision (where they read back as NULL) verify unchanged.
LATER_FIELDS: frozenset[str] = frozenset({"gradable", "gate_reason", "ood_score"})
# What a row's hash covers: its content and its position, never the hashes themselves.
CHAINED_FIELDS: tuple[str, ...] = ("sequence", *PREDICTION_FIELDS)


def utc(moment: datetime) -> datetime:
    """Aware UTC datetime; a naive one (SQLite gives those back) is taken as already UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """numpy scalars and containers of them -> plain Python, so JSON and hashing are exact."""
    if type(value) in _PLAIN_TYPES:  # the common case, without the hasattr probe below
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def normalise_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values of one predictions row (service.records.prediction_rows), as the chain hashes them:
    plain Python (no numpy scalars), a uuid id, an aware UTC time, copies of the nested dicts (the
    answered values are never changed). Raises ValueError when a column is missing."""
    missing = [name for name in PREDICTION_FIELDS if name not in values and name not in LATER_FIELDS]
    if missing:
        raise ValueError(f"prediction record lacks field(s) {', '.join(missing)}")
    row = {name: _plain(values.get(name)) for name in PREDICTION_FIELDS}
    row["id"] = row["id"] if isinstance(row["id"], uuid.UUID) else uuid.UUID(str(row["id"]))
    row["created_at"] = utc(row["created_at"])
    row["confidence"] = float(row["confidence"])
    row["probabilities"] = {k: float(v) for k, v in row["probabilities"].items()}
    row["refer"] = bool(row["refer"])
    if row["ood_score"] is not None:
        row["ood_score"] = float(row["ood_score"])
    return row


def _jsonable(name: str, value: Any) -> Any:
    if name == "id":
        return str(value)
    if name == "created_at":
        return utc(value).isoformat(timespec="microseconds")
    return value


def row_to_json(row: dict[str, Any]) -> str:
    """One spool line (without the newline)."""
    return json.dumps({k: _jsonable(k, v) for k, v in row.items()}, sort_keys=True, separators=(",", ":"))


def row_from_json(line: str) -> dict[str, Any]:
    data = json.loads(line)
    # Spool lines written before the gate's columns existed lack them.
    row = {name: data[name] if name not in LATER_FIELDS else data.get(name) for name in PREDICTION_FIELDS}
    row["id"] = uuid.UUID(row["id"])
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row


def canonical_bytes(row: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers; ``row`` may be a dict of column values or come from the database."""
    content = {name: _jsonable(name, row[name]) for name in CHAINED_FIELDS if name not in LATER_FIELDS}
    # A later column enters the hash only when set (a row written before it has no such key at all).
    content.update({name: row.get(name) for name in LATER_FIELDS if row.get(name) is not None})
    return json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
