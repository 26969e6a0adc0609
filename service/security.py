"""API keys: ``Authorization: Bearer kdoct_...``.

Keys are made, revoked and rotated with the records (service/db/api_clients.py); this module checks
them on requests, against the worker's in-memory table of every key's hash (service/key_table.py):
a known key costs no database work, an unknown one waits for the next shared reload (at most one per
0.5 s), and a revocation or rotation takes effect within ``refresh_s`` (KDOCT_API_KEY_REFRESH_S).
Keys are never logged.

``require_scope(scope)`` is the FastAPI dependency the routers use; it takes the app's
``Authenticator`` from ``get_authenticator`` (the typed app state, service/state.py) and answers 401
(missing, invalid or revoked key) or 403 (key without the scope) as problem+json
(service/problems.py), each failure counted by reason. Beyond
KDOCT_AUTH_FAILURE_LIMIT failed authentications from one address in KDOCT_AUTH_FAILURE_WINDOW_S, that
address gets 429 with Retry-After until the window ends, good key or not (service/auth_throttle.py).

While the database is unreachable the last loaded table keeps answering: known keys keep their state
and an unknown key is 401 (it was not a key when the table was loaded; a key created during the
outage works once the database is back). A worker that has not loaded the table once since it started
cannot check any key: 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.auth_throttle import FailureThrottle
from service.db.api_clients import KEY_PREFIX, SCOPES, hash_key, key_rows
from service.key_table import KeyTable, NotLoaded
from service.problems import Problem
from service.state import AppState, get_state

__all__ = ["ANONYMOUS", "AuthError", "Authenticator", "Client", "get_authenticator", "require_scope"]

_REVOKED = "revoked"
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
    """401 (reason missing | invalid | revoked), 403 (forbidden) or 429 (rate_limited), answered as
    problem+json by the service's Problem handler; ``auth_reason`` is the value of
    kdoct_auth_failures_total's label."""

    def __init__(self, auth_reason: str, detail: str, *, retry_after_s: int | None = None) -> None:
        if auth_reason == "forbidden":
            slug, headers = "forbidden", {}
        elif auth_reason == "rate_limited":
            slug, headers = "too-many-requests", {"Retry-After": str(retry_after_s)}
        else:
            slug, headers = "unauthorized", {"WWW-Authenticate": 'Bearer realm="kdoct"'}
        super().__init__(slug, detail, headers=headers)
        self.auth_reason = auth_reason


class Authenticator:
    """Turns an Authorization header (and the caller's address) into a Client. ``start`` loads the key
    table and keeps it fresh (the app's lifespan calls it); without it, the first unknown key loads it."""

    def __init__(
        self,
        sessions: sessionmaker[Session] | None,
        *,
        enabled: bool = True,
        refresh_s: float = 2.0,
        miss_interval_s: float = 0.5,
        failure_limit: int = 0,
        failure_window_s: float = 60.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if enabled and sessions is None:
            raise ValueError("an enabled Authenticator needs a session factory")
        self.sessions = sessions
        self.enabled = enabled
        self.on_failure = on_failure or (lambda reason: None)
        self.table: KeyTable[Client | str] = KeyTable(
            self._load, refresh_s=refresh_s, miss_interval_s=miss_interval_s
        )
        self.throttle = FailureThrottle(failure_limit, failure_window_s)

    async def start(self) -> None:
        if self.enabled:
            await self.table.start()

    async def stop(self) -> None:
        await self.table.stop()

    async def authenticate(self, key: str | None, scope: str, peer: str | None = None) -> Client:
        """``key`` is the bearer token, None when the request carried none."""
        try:
            client = await self._client(key, peer)
            if not client.allows(scope):
                raise AuthError("forbidden", f"this API key lacks the '{scope}' scope")
        except AuthError as exc:
            self.on_failure(exc.auth_reason)
            raise
        return client

    async def _client(self, key: str | None, peer: str | None) -> Client:
        if not self.enabled:
            return ANONYMOUS
        # Before the key is looked at: a held-off address learns nothing about its guesses.
        retry_after_s = self.throttle.retry_after(peer)
        if retry_after_s is not None:
            raise AuthError(
                "rate_limited",
                f"too many failed authentications from this address "
                f"({self.throttle.limit} in {self.throttle.window_s:g} s); retry after {retry_after_s} s",
                retry_after_s=retry_after_s,
            )
        try:
            return await self._known(key)
        except AuthError:
            self.throttle.failed(peer)
            raise

    async def _known(self, key: str | None) -> Client:
        if not key:
            raise AuthError("missing", "send the API key as 'Authorization: Bearer <key>'")
        if not key.startswith(KEY_PREFIX):
            raise AuthError("invalid", f"unknown API key (keys start with '{KEY_PREFIX}')")
        # Looked up by the sha256 of the presented key: how long the lookup takes depends on that hash,
        # which the caller computes from its own input, never on a stored key, so no timing tells a
        # guesser anything about a stored key (and the hashes are of 256-bit random keys).
        try:
            found = await self.table.find(hash_key(key))
        except NotLoaded:
            raise Problem(
                "not-ready",
                "API keys cannot be checked right now (the database is unreachable); retry shortly",
                reason="not_ready",
                headers={"Retry-After": "5"},
            ) from None
        if found == _REVOKED:
            raise AuthError("revoked", "this API key has been revoked")
        if not isinstance(found, Client):
            raise AuthError("invalid", "unknown API key")
        return found

    def _load(self) -> dict[str, Client | str]:
        """The whole key table, in one SELECT (run in a thread by the KeyTable)."""
        assert self.sessions is not None
        with self.sessions() as session:
            rows = key_rows(session)
        return {
            row.key_hash: _REVOKED if row.revoked_at is not None else Client(row.name, frozenset(row.scopes))
            for row in rows
        }


async def get_authenticator(state: AppState = Depends(get_state)) -> Authenticator:
    return state.authenticator


def require_scope(scope: str) -> Callable:
    """FastAPI dependency: the calling Client, which must hold ``scope`` (admin holds every scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes are {', '.join(SCOPES)}")

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
        authenticator: Authenticator = Depends(get_authenticator),
    ) -> Client:
        peer = request.client.host if request.client else None
        return await authenticator.authenticate(credentials.credentials if credentials else None, scope, peer)

    dependency.__name__ = f"require_{scope}_scope"
    return dependency
