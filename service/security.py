"""API keys: ``Authorization: Bearer kdoct_...``.

Keys are made, revoked and rotated with the records (service/db/api_clients.py); this module checks
them on requests. Keys are never logged.

``require_scope(scope)`` is the FastAPI dependency the routers use; it reads the ``Authenticator``
from ``app.state.authenticator`` and answers 401 (missing, invalid or revoked key) or 403 (key without
the scope) as problem+json (service/problems.py), each failure counted by reason. While the database is
unreachable, keys already cached keep their last known state; unknown keys get 503.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.db.api_clients import KEY_PREFIX, SCOPES, client_by_key_hash, hash_key
from service.problems import Problem

__all__ = ["ANONYMOUS", "AuthError", "Authenticator", "Client", "require_scope"]

log = logging.getLogger(__name__)

_CACHE_MAX_ENTRIES = 10_000
NEGATIVE_TTL_S = 2.0
_NEGATIVE_MAX_ENTRIES = 10_000
# auto_error=False: a missing key is our 401 problem+json, not FastAPI's plain 403. Declaring the
# scheme also gives /docs its "Authorize" button.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer kdoct_...`")


@dataclass(frozen=True)
class Client:
    """Who is calling. ``id`` is the client's name (what prediction rows record); None when auth is off."""

    id: str | None
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Client(id=None, scopes=frozenset(SCOPES))


class AuthError(Problem):
    """401 (reason missing | invalid | revoked) or 403 (forbidden), answered as problem+json by the
    service's Problem handler; ``auth_reason`` is the value of kdoct_auth_failures_total's label."""

    def __init__(self, auth_reason: str, detail: str) -> None:
        forbidden = auth_reason == "forbidden"
        headers = {} if forbidden else {"WWW-Authenticate": 'Bearer realm="kdoct"'}
        super().__init__("forbidden" if forbidden else "unauthorized", detail, headers=headers)
        self.auth_reason = auth_reason


class Authenticator:
    """Turns an Authorization header into a Client. Lookups are cached for ``cache_ttl_s`` seconds so
    the database is not queried on every request; a revocation takes effect within that time."""

    def __init__(
        self,
        sessions: sessionmaker[Session] | None,
        *,
        enabled: bool = True,
        cache_ttl_s: float = 5.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if enabled and sessions is None:
            raise ValueError("an enabled Authenticator needs a session factory")
        self.sessions = sessions
        self.enabled = enabled
        self.cache_ttl_s = cache_ttl_s
        self.on_failure = on_failure or (lambda reason: None)
        self._cache: dict[str, tuple[float, Client | str]] = {}
        # Unknown keys, remembered briefly so that a flood of one bad key costs one lookup per
        # NEGATIVE_TTL_S, in a bounded map (cleared when full) so that guessing cannot fill memory.
        self._unknown: dict[str, float] = {}
        self._lock = threading.Lock()

    async def identify(self, key: str | None) -> Client:
        """The key's Client, whatever its scopes (the middleware's check before a body is read)."""
        try:
            return await self._client(key)
        except AuthError as exc:
            self.on_failure(exc.auth_reason)
            raise

    async def authenticate(self, key: str | None, scope: str) -> Client:
        """``key`` is the bearer token, None when the request carried none."""
        try:
            client = await self._client(key)
            if not client.allows(scope):
                raise AuthError("forbidden", f"this API key lacks the '{scope}' scope")
        except AuthError as exc:
            self.on_failure(exc.auth_reason)
            raise
        return client

    async def _client(self, key: str | None) -> Client:
        if not self.enabled:
            return ANONYMOUS
        if not key:
            raise AuthError("missing", "send the API key as 'Authorization: Bearer <key>'")
        if not key.startswith(KEY_PREFIX):
            raise AuthError("invalid", f"unknown API key (keys start with '{KEY_PREFIX}')")
        key_hash = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        unknown_since = self._unknown.get(key_hash)
        if cached is not None and now - cached[0] <= self.cache_ttl_s:
            found = cached[1]
        elif unknown_since is not None and now - unknown_since <= NEGATIVE_TTL_S:
            found = "invalid"
        else:
            try:
                found = await run_in_threadpool(self._lookup, key_hash)
            except SQLAlchemyError as exc:
                found = self._during_outage(cached, exc)
            with self._lock:
                if found == "invalid":
                    if len(self._unknown) >= _NEGATIVE_MAX_ENTRIES:
                        self._unknown.clear()
                    self._unknown[key_hash] = now
                else:
                    if len(self._cache) >= _CACHE_MAX_ENTRIES:
                        self._cache.clear()
                    self._cache[key_hash] = (now, found)
                    self._unknown.pop(key_hash, None)
        if found == "revoked":
            raise AuthError("revoked", "this API key has been revoked")
        if not isinstance(found, Client):
            raise AuthError("invalid", "unknown API key")
        return found

    def _during_outage(self, cached: tuple[float, Client | str] | None, exc: SQLAlchemyError) -> Client | str:
        """The database cannot be asked. A key seen before keeps its last known state (predictions go
        to the spool meanwhile, so clinicians keep working); re-caching it spares the dead database a
        connection attempt per request. A key never seen cannot be checked: 503, not 401."""
        cause = getattr(exc, "orig", None) or exc
        log.warning(
            "API key lookup failed (%s); using the last known state of cached keys", type(cause).__name__
        )
        if cached is None:
            raise Problem(
                "not-ready",
                "API keys cannot be checked right now (the database is unreachable); retry shortly",
                reason="not_ready",
                headers={"Retry-After": "5"},
            )
        return cached[1]

    def _lookup(self, key_hash: str) -> Client | str:
        assert self.sessions is not None
        with self.sessions() as session:
            row = client_by_key_hash(session, key_hash)
        # compare_digest: the lookup above is by hash, but the final check should not leak timing.
        if row is None or not hmac.compare_digest(row.key_hash, key_hash):
            return "invalid"
        if row.revoked_at is not None:
            return "revoked"
        return Client(id=row.name, scopes=frozenset(row.scopes))


def require_scope(scope: str) -> Callable:
    """FastAPI dependency: the calling Client, which must hold ``scope`` (admin holds every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Client:
        authenticator: Authenticator = request.app.state.authenticator
        return await authenticator.authenticate(credentials.credentials if credentials else None, scope)

    dependency.__name__ = f"require_{scope}_scope"
    return dependency
