"""API clients and their keys, kept with the records: create, revoke, rotate, list, look up.

A key is 32 random bytes (url-safe base64) behind the prefix ``kdoct_``, so a leaked key is easy to
recognise in logs or code scanners. Only its sha256 is stored: keys are high-entropy, so a fast hash
is enough (a slow password hash would only add latency to every request). The ``key_prefix`` column
(the first characters) tells keys apart in listings. Requests are checked in service/security.py.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.tables import ApiClient

__all__ = [
    "KEY_PREFIX",
    "SCOPES",
    "create_client",
    "generate_key",
    "hash_key",
    "key_rows",
    "list_clients",
    "revoke_client",
    "rotate_key",
]

KEY_PREFIX = "kdoct_"
SCOPES = ("classify", "read", "feedback", "admin")
_SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 6


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
    return chosen


def create_client(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiClient, str]:
    """A new client and its key; the key is returned once and never stored. Names are never reused,
    so prediction rows keep naming one client."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"client name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    key = generate_key()
    client = ApiClient(
        name=name,
        key_hash=hash_key(key),
        key_prefix=key[:_SHOWN_PREFIX_CHARS],
        scopes=_check_scopes(scopes),
        created_at=datetime.now(UTC),
    )
    session.add(client)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ValueError(f"an API client named {name!r} exists already (names are never reused)") from None
    return client, key


def revoke_client(session: Session, name: str) -> ApiClient:
    client = session.scalars(select(ApiClient).where(ApiClient.name == name)).first()
    if client is None:
        raise LookupError(f"no API client named {name!r}")
    if client.revoked_at is None:
        client.revoked_at = datetime.now(UTC)
        session.commit()
    return client


def rotate_key(session: Session, name: str) -> tuple[ApiClient, str]:
    """A new key for an existing, unrevoked client; the old key stops working (within each worker's
    key refresh, KDOCT_API_KEY_REFRESH_S)."""
    client = session.scalars(select(ApiClient).where(ApiClient.name == name)).first()
    if client is None:
        raise LookupError(f"no API client named {name!r}")
    if client.revoked_at is not None:
        raise ValueError(f"API client {name!r} is revoked; create a new client instead")
    key = generate_key()
    client.key_hash, client.key_prefix = hash_key(key), key[:_SHOWN_PREFIX_CHARS]
    session.commit()
    return client, key


def list_clients(session: Session) -> list[ApiClient]:
    return list(session.scalars(select(ApiClient).order_by(ApiClient.name)))


def key_rows(session: Session) -> list[Row]:
    """Every key's hash, client name, scopes and revocation time: what a worker holds in memory to
    check requests (service/key_table.py), in one SELECT of four columns."""
    columns = (ApiClient.key_hash, ApiClient.name, ApiClient.scopes, ApiClient.revoked_at)
    return list(session.execute(select(*columns)))
