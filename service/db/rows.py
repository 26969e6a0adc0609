"""Prediction rows as plain dicts: normalised from what service.records.prediction_rows derives from
an answer, turned into JSON for the spool and back, and rendered canonically for the hash chain.

A spool line is read back only after it is checked against the predictions table's own columns (type,
length, null or not; no NUL, no unpaired surrogate, no NaN or infinity anywhere): a line that names a
value the database or the chain's hashing would refuse is not a row (BadLine), so one bad line is set
aside by the replay instead of failing the transaction of every good row around it.

The canonical form must give the same bytes before the insert and after reading the row back from
either database, so it normalises what the databases change: datetimes to UTC ISO 8601 with
microseconds (SQLite returns them naive), uuids to their hyphenated text, JSON with sorted keys.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Uuid

from service.db.tables import Prediction

__all__ = [
    "CHAINED_FIELDS",
    "PREDICTION_FIELDS",
    "BadLine",
    "canonical_bytes",
    "normalise_row",
    "row_from_json",
    "row_from_line",
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


class BadLine(ValueError):
    """A spool line that is not a prediction row; ``reason`` is one of BAD_LINE_REASONS (a metric label,
    never the line's content)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


BAD_LINE_REASONS = ("undecodable", "not_json", "not_a_row")


def row_from_line(line: bytes) -> dict[str, Any]:
    """One spool line (bytes, without its newline) -> a row; BadLine when it is not one."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("undecodable", f"not UTF-8 at byte {exc.start}") from None
    return row_from_json(text)


def row_from_json(line: str) -> dict[str, Any]:
    """One spool line (text) -> a row; BadLine when it is not JSON or not a prediction row."""
    try:
        data = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadLine("not_json", type(exc).__name__) from None
    if not isinstance(data, dict):
        raise BadLine("not_a_row", f"a JSON {type(data).__name__}, not an object")
    # Spool lines written before the gate's columns existed lack them.
    row = {}
    for name in PREDICTION_FIELDS:
        if name not in data and name not in LATER_FIELDS:
            raise BadLine("not_a_row", f"no {name}")
        row[name] = _column_value(name, data.get(name))
    return row


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_COLUMNS = Prediction.__table__.columns
_INT32 = 1 << 31


def _column_value(name: str, value: Any) -> Any:
    """`value` as the column `name` stores it; BadLine when the column would refuse it."""
    column = _COLUMNS[name]
    if value is None:
        if column.nullable:
            return None
        raise BadLine("not_a_row", f"{name} is null")
    kind = column.type
    try:
        if isinstance(kind, Uuid):
            return uuid.UUID(_text(value))
        if isinstance(kind, DateTime):
            return utc(datetime.fromisoformat(_text(value)))
        if isinstance(kind, String):
            text = _text(value)
            if kind.length is not None and len(text) > kind.length:
                raise ValueError(f"longer than {kind.length}")
            return text
        if isinstance(kind, Boolean):
            if type(value) is not bool:
                raise TypeError("not a boolean")
            return value
        if isinstance(kind, Integer):  # BigInteger is an Integer too; none is among these fields
            if type(value) is not int or not -_INT32 <= value < _INT32:
                raise TypeError("not a 32-bit integer")
            return value
        if isinstance(kind, Float):
            return _finite(value)
        if isinstance(kind, JSON):
            if not isinstance(value, dict):
                raise TypeError("not a JSON object")
            _check_json(value, depth=0)
            return value
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: a time beyond year 1..9999 in UTC
        raise BadLine("not_a_row", f"{name}: {type(exc).__name__}") from None
    raise BadLine("not_a_row", f"{name}: no check for {type(kind).__name__}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    if "\x00" in value:
        raise ValueError("holds a NUL character")
    value.encode("utf-8")  # an unpaired surrogate (JSON allows "\ud800") raises UnicodeEncodeError
    return value


def _finite(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise TypeError("not a finite number")
    return float(value)  # the chain hashes what the database gives back: a float


def _check_json(value: Any, depth: int) -> None:
    """Nested JSON values: text the databases store, finite numbers, bounded nesting."""
    if depth > 16:
        raise ValueError("nested too deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, str):
        _text(value)
    elif isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
    elif value is not None and not isinstance(value, bool):
        raise TypeError(f"{type(value).__name__} in JSON")


def canonical_bytes(row: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers; ``row`` may be a dict of column values or come from the database."""
    content = {name: _jsonable(name, row[name]) for name in CHAINED_FIELDS if name not in LATER_FIELDS}
    # A later column enters the hash only when set (a row written before it has no such key at all).
    content.update({name: row.get(name) for name in LATER_FIELDS if row.get(name) is not None})
    return json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
