"""API keys: stored hashed, scoped, revocable; 401/403 problem+json, counted by reason."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from service.db.api_clients import KEY_PREFIX, create_client, revoke_client, rotate_key
from service.db.models import ApiClient
from service.db.session import make_sessionmaker
from service.problems import install_problem_handlers
from service.security import Authenticator, Client, require_scope


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


@pytest.fixture
def api(engine: Engine):
    """A real FastAPI app guarded by require_scope, with the failure reasons counted."""
    failures: Counter[str] = Counter()
    app = FastAPI()
    app.state.authenticator = Authenticator(
        make_sessionmaker(engine), cache_ttl_s=0.0, on_failure=lambda reason: failures.update([reason])
    )
    install_problem_handlers(app)

    @app.get("/predictions")
    async def read(client: Client = Depends(require_scope("read"))) -> dict:
        return {"client": client.id}

    @app.post("/classify")
    async def classify(client: Client = Depends(require_scope("classify"))) -> dict:
        return {"client": client.id}

    with make_sessionmaker(engine)() as session:
        keys = {
            name: create_client(session, name, scopes)[1]
            for name, scopes in {"reader": ["read"], "ops": ["admin"], "gone": ["read"]}.items()
        }
        revoke_client(session, "gone")
    with TestClient(app) as http:
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


def test_revoked_and_rotated_keys_stop_working(api) -> None:
    http, keys, _, engine = api
    with make_sessionmaker(engine)() as session:
        _, new_key = rotate_key(session, "reader")
    assert http.get("/predictions", headers=_bearer(keys["reader"])).status_code == 401
    assert http.get("/predictions", headers=_bearer(new_key)).status_code == 200
    with make_sessionmaker(engine)() as session:
        revoke_client(session, "reader")
    assert http.get("/predictions", headers=_bearer(new_key)).status_code == 401


def test_disabled_auth_lets_anonymous_through(engine: Engine) -> None:
    app = FastAPI()
    app.state.authenticator = Authenticator(None, enabled=False)

    @app.get("/predictions")
    async def read(client: Client = Depends(require_scope("read"))) -> dict:
        return {"client": client.id}

    with TestClient(app) as http:
        assert http.get("/predictions").json() == {"client": None}


def test_database_outage_keeps_known_keys_working_and_answers_unknown_keys_503(tmp_path) -> None:
    """While the database is down (predictions go to the spool), a key seen before keeps its last
    known state; a key never seen cannot be checked, which is 503 (retry), not 401 (wrong key)."""
    import asyncio

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
    authenticator = Authenticator(make_sessionmaker(engine), cache_ttl_s=0.0)

    async def scenario() -> None:
        assert (await authenticator.authenticate(known, "classify")).id == "ris"
        with pytest.raises(Problem, match="revoked"):
            await authenticator.authenticate(revoked, "classify")
        # The database goes away: nothing listens on port 1.
        authenticator.sessions = make_sessionmaker(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/x"))
        assert (await authenticator.authenticate(known, "classify")).id == "ris"
        with pytest.raises(Problem, match="revoked"):
            await authenticator.authenticate(revoked, "classify")
        with pytest.raises(Problem, match="cannot be checked") as unknown:
            await authenticator.authenticate(KEY_PREFIX + "never-seen", "classify")
        assert unknown.value.status == 503

    asyncio.run(scenario())
    engine.dispose()
