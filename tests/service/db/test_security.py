"""API keys: stored hashed, scoped, revocable, held in memory by each worker; 401/403/429 problem+json,
counted by reason."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.db.api_clients import KEY_PREFIX, create_client, revoke_client, rotate_key
from service.db.session import make_sessionmaker
from service.db.tables import ApiClient
from service.problems import install_problem_handlers
from service.security import Authenticator, AuthError, Client, get_authenticator, require_scope


def test_keys_are_random_prefixed_and_stored_only_hashed(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        _, first = create_client(session, "ris", ["classify"])
        _, second = create_client(session, "pacs", ["read", "feedback"])
    assert first.startswith(KEY_PREFIX) and second.startswith(KEY_PREFIX) and first != second
    assert len(first) > len(KEY_PREFIX) + 40
    with engine.connect() as conn:
        stored = [str(value) for row in conn.execute(select(ApiClient.__table__)) for value in row]
    assert not any(first in value or second in value for value in stored)


def test_bad_names_scopes_and_reused_names_are_refused(engine: Engine) -> None:
    with make_sessionmaker(engine)() as session:
        with pytest.raises(ValueError, match="scopes"):
            create_client(session, "ris", ["classify", "root"])
        with pytest.raises(ValueError, match="name"):
            create_client(session, "a b", ["read"])
        create_client(session, "ris", ["classify"])
        revoke_client(session, "ris")
        with pytest.raises(ValueError, match="never reused"):
            create_client(session, "ris", ["classify"])


REFRESH_S = 0.2  # the key table's reload period in these tests (the service's default: 2 s)


def _guarded_app(authenticator: Authenticator) -> FastAPI:
    """A real FastAPI app guarded by require_scope; its lifespan starts the key table, as the service's."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await authenticator.start()
        yield
        await authenticator.stop()

    app = FastAPI(lifespan=lifespan)
    app.dependency_overrides[get_authenticator] = lambda: authenticator
    install_problem_handlers(app)

    @app.get("/predictions")
    async def read(client: Client = Depends(require_scope("read"))) -> dict:
        return {"client": client.id}

    @app.post("/classify")
    async def classify(client: Client = Depends(require_scope("classify"))) -> dict:
        return {"client": client.id}

    return app


@pytest.fixture
def api(engine: Engine):
    """The guarded app, with the failure reasons counted."""
    failures: Counter[str] = Counter()
    authenticator = Authenticator(
        make_sessionmaker(engine), refresh_s=REFRESH_S, on_failure=lambda reason: failures.update([reason])
    )
    with make_sessionmaker(engine)() as session:
        keys = {
            name: create_client(session, name, scopes)[1]
            for name, scopes in {"reader": ["read"], "ops": ["admin"], "gone": ["read"]}.items()
        }
        revoke_client(session, "gone")
    with TestClient(_guarded_app(authenticator)) as http:
        yield http, keys, failures, engine


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_right_scope_passes_and_admin_holds_every_scope(api) -> None:
    http, keys, failures, _ = api
    assert http.get("/predictions", headers=_bearer(keys["reader"])).json() == {"client": "reader"}
    assert http.post("/classify", headers=_bearer(keys["ops"])).json() == {"client": "ops"}
    assert not failures


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing"),
        ({"Authorization": "Bearer kdoct_not-a-real-key"}, 401, "invalid"),
        ({"Authorization": "Bearer sk-something-else"}, 401, "invalid"),
        ("gone", 401, "revoked"),
        ("reader", 403, "forbidden"),
    ],
)
def test_failures_are_problem_json_and_counted(api, headers, status: int, reason: str) -> None:
    http, keys, failures, _ = api
    if isinstance(headers, str):
        headers = _bearer(keys[headers])
    response = http.post("/classify", headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["type"].startswith("https://kdoct.dev/problems/")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert failures == Counter({reason: 1})
    for key in keys.values():
        assert key not in response.text


def _status_within(http: TestClient, key: str, status: int, seconds: float) -> float:
    """Seconds until GET /predictions with ``key`` answered ``status``; fails after ``seconds``."""
    began = time.monotonic()
    while (answered := http.get("/predictions", headers=_bearer(key)).status_code) != status:
        assert time.monotonic() - began < seconds, f"still {answered} after {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - began


def test_revoked_and_rotated_keys_stop_working_within_the_refresh(api) -> None:
    http, keys, _, engine = api
    assert http.get("/predictions", headers=_bearer(keys["reader"])).status_code == 200
    with make_sessionmaker(engine)() as session:
        _, new_key = rotate_key(session, "reader")
    # The new key works at once: an unknown key waits for a reload that starts after it arrived.
    assert http.get("/predictions", headers=_bearer(new_key)).status_code == 200
    # The old one stops within one refresh period (and one load), with a wide margin here.
    _status_within(http, keys["reader"], 401, REFRESH_S + 2.0)
    with make_sessionmaker(engine)() as session:
        revoke_client(session, "reader")
    _status_within(http, new_key, 401, REFRESH_S + 2.0)
    assert (
        http.get("/predictions", headers=_bearer(new_key)).json()["detail"] == "this API key has been revoked"
    )


def test_a_key_created_while_serving_works_at_once(api) -> None:
    """Every key made after the table was loaded, used right away: never a 401 (the CLI's promise)."""
    http, _, _, engine = api
    for index in range(5):
        with make_sessionmaker(engine)() as session:
            _, key = create_client(session, f"new-{index}", ["read"])
        assert http.get("/predictions", headers=_bearer(key)).json() == {"client": f"new-{index}"}


def test_distinct_bad_keys_share_one_table_load(engine: Engine) -> None:
    """Issue 23, case 11: each distinct unknown key cost a database lookup. Now 500 of them at once
    share the reloads (at most one per 0.5 s), and a repeated one costs none."""
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with make_sessionmaker(engine)() as session:
        _, good = create_client(session, "ris", ["classify"])
    authenticator = Authenticator(make_sessionmaker(engine))
    bad_keys = [f"{KEY_PREFIX}{uuid.uuid4().hex}" for _ in range(500)]

    async def scenario() -> tuple[list, int, list]:
        calls = [authenticator.authenticate(key, "classify") for key in [*bad_keys, good]]
        first = await asyncio.gather(*calls, return_exceptions=True)
        lookups = sum("api_clients" in statement for statement in statements)
        statements.clear()
        again = await asyncio.gather(
            *(authenticator.authenticate(key, "classify") for key in bad_keys[:50]), return_exceptions=True
        )
        await authenticator.stop()
        return [*first, *again], lookups, list(statements)

    started = time.monotonic()
    results, lookups, later = asyncio.run(scenario())
    assert time.monotonic() - started < 10
    refused = [result for result in results if isinstance(result, AuthError)]
    assert len(refused) == 550 and {error.status for error in refused} == {401}
    assert results[500].id == "ris"
    assert lookups <= 3, f"{lookups} key lookups for 501 keys"
    assert later == [], "a key found absent by a load was looked up again"


def test_failed_authentications_beyond_the_limit_hold_the_address_off(engine: Engine) -> None:
    """Beyond the limit, an address gets 429 with Retry-After, a good key included, counted; another
    address is not affected; after the window the address may try again."""
    failures: Counter[str] = Counter()
    with make_sessionmaker(engine)() as session:
        _, good = create_client(session, "ris", ["read"])
    authenticator = Authenticator(
        make_sessionmaker(engine),
        failure_limit=3,
        failure_window_s=1.5,
        on_failure=lambda reason: failures.update([reason]),
    )
    # The caller's address as a trusted proxy reports it (uvicorn's own middleware, as in `serve`).
    app = ProxyHeadersMiddleware(_guarded_app(authenticator), trusted_hosts="*")
    guesser = {"X-Forwarded-For": "198.51.100.7"}
    other = {"X-Forwarded-For": "203.0.113.9"}
    with TestClient(app) as http:
        statuses = [
            http.get("/predictions", headers={**guesser, **_bearer(f"{KEY_PREFIX}guess-{i}")}).status_code
            for i in range(3)
        ]
        assert statuses == [401, 401, 401]
        held = http.get("/predictions", headers={**guesser, **_bearer(f"{KEY_PREFIX}guess-4")})
        assert held.status_code == 429
        assert held.headers["content-type"] == "application/problem+json"
        assert held.json()["type"] == "https://kdoct.dev/problems/too-many-requests"
        assert 1 <= int(held.headers["retry-after"]) <= 2
        # Held off with a good key too: otherwise the 429s would tell a guesser which guess was right.
        assert http.get("/predictions", headers={**guesser, **_bearer(good)}).status_code == 429
        assert http.post("/classify", headers={**guesser, **_bearer(good)}).status_code == 429
        assert http.get("/predictions", headers={**other, **_bearer(good)}).status_code == 200
        assert failures == Counter({"invalid": 3, "rate_limited": 3})
        time.sleep(1.6)
        assert http.get("/predictions", headers={**guesser, **_bearer(good)}).status_code == 200


def test_disabled_auth_lets_anonymous_through(engine: Engine) -> None:
    app = FastAPI()
    app.dependency_overrides[get_authenticator] = lambda: Authenticator(None, enabled=False)

    @app.get("/predictions")
    async def read(client: Client = Depends(require_scope("read"))) -> dict:
        return {"client": client.id}

    with TestClient(app) as http:
        assert http.get("/predictions").json() == {"client": None}


def test_database_outage_keeps_the_loaded_table_and_answers_503_only_without_one(tmp_path) -> None:
    """While the database is down (predictions go to the spool), the table loaded before keeps
    answering: known keys keep their state, an unknown key is 401 (it was no key when the table was
    loaded). A worker that never loaded the table cannot tell any key: 503 (retry), not 401."""
    from service.db.migrate import upgrade
    from service.db.session import make_engine
    from service.problems import Problem

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        _, known = create_client(session, "ris", ["classify"])
        _, revoked = create_client(session, "old", ["classify"])
        revoke_client(session, "old")
    unreachable = make_sessionmaker(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/x"))
    authenticator = Authenticator(make_sessionmaker(engine), refresh_s=REFRESH_S)
    never_loaded = Authenticator(unreachable)

    async def scenario() -> None:
        await authenticator.start()
        assert (await authenticator.authenticate(known, "classify")).id == "ris"
        # The database goes away: nothing listens on port 1.
        authenticator.sessions = unreachable
        await asyncio.sleep(REFRESH_S * 3)  # reloads fail meanwhile
        assert (await authenticator.authenticate(known, "classify")).id == "ris"
        with pytest.raises(Problem, match="revoked"):
            await authenticator.authenticate(revoked, "classify")
        with pytest.raises(Problem, match="unknown API key") as unknown:
            await authenticator.authenticate(KEY_PREFIX + "never-seen", "classify")
        assert unknown.value.status == 401
        await authenticator.stop()

        await never_loaded.start()
        for key in (known, KEY_PREFIX + "never-seen"):
            with pytest.raises(Problem, match="cannot be checked") as refused:
                await never_loaded.authenticate(key, "classify")
            assert refused.value.status == 503
        await never_loaded.stop()

    asyncio.run(scenario())
    engine.dispose()
