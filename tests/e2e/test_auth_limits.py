"""End to end, API keys under attack (issue 23, case 11): a real uvicorn server on PostgreSQL with auth
on. Distinct bad keys cost no database transaction each (every worker holds the keys' hashes in
memory), and an address that fails too often is held off with 429, whatever key it sends.

Client addresses: the service trusts X-Forwarded-For from 127.0.0.1 (uvicorn's default), as it would
from a proxy on its host, so one test client can speak for many addresses. The addresses are from the
documentation ranges (RFC 5737); nothing is sent to them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from records_fixtures import RecordsServer, create_key, prepare_database, serve

from kdoct_testing.postgres import SERVER, create_database, drop_database
from service.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE

pytestmark = pytest.mark.postgres

FAILURE_LIMIT = 5
BAD_KEYS = 2_000
# 500 addresses, 4 failures each: under the limit, so what is measured is the key table, not the limit.
ADDRESSES = [f"198.51.100.{i}" for i in range(256)] + [f"203.0.113.{i}" for i in range(244)]


@pytest.fixture(scope="module")
def guarded_server(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[tuple[RecordsServer, str]]:
    """One worker (the failure counts are per worker) on a throwaway database; (server, database name)."""
    name, database_url = create_database()
    try:
        keys = prepare_database(database_url, repo_root)
        workdir = tmp_path_factory.mktemp("auth-limits-server")
        with serve(
            e2e_bundles,
            workdir,
            database_url,
            keys,
            repo_root,
            KDOCT_AUTH_FAILURE_LIMIT=str(FAILURE_LIMIT),
            KDOCT_AUTH_FAILURE_WINDOW_S="60",
            KDOCT_LOG_LEVEL="info",
        ) as server:
            yield server, name
    finally:
        drop_database(name)


def _transactions(database: str) -> int:
    """Transactions PostgreSQL has counted in `database` (read from another database: this connection's
    own transactions do not count there)."""
    with psycopg.connect(SERVER, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0])


async def _status(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    """One request on a connection of its own (a plain HTTP/1.1 exchange: an HTTP client library's
    pool costs more CPU than the server's refusal, and would measure itself)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        body = b"x" if method == "POST" else b""
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # to the end: the server closes the connection
        return int(status_line.split(b" ", 2)[1])
    finally:
        writer.close()


def _bad_key_burst(port: int, count: int, connections: int) -> Counter[int]:
    """`count` requests, each with a key never seen, half POST /classify (refused by the middleware
    before the body) and half GET /predictions (by the route's dependency), `connections` at a time;
    their statuses counted."""

    async def burst() -> list[int]:
        gate = asyncio.Semaphore(connections)

        async def one(index: int) -> int:
            headers = {
                "Authorization": f"Bearer kdoct_bad-{index:05d}-{time.monotonic_ns()}",
                "X-Forwarded-For": ADDRESSES[index % len(ADDRESSES)],
            }
            method, path = ("POST", "/classify") if index % 2 == 0 else ("GET", "/predictions")
            async with gate:
                return await asyncio.wait_for(_status(port, method, path, headers), 60)

        return await asyncio.gather(*(one(index) for index in range(count)))

    return Counter(asyncio.run(burst()))


def test_distinct_bad_keys_cost_no_database_transaction_each(guarded_server) -> None:
    """Issue 23, case 11: 2,000 distinct bad keys cost 3,912 database transactions. Now they are refused
    from the worker's key table; unknown keys share its reloads (at most one per 0.5 s), and the table
    is reloaded every 2 s anyway: a few dozen transactions at most, whatever the number of keys."""
    server, database = guarded_server
    before = _transactions(database)
    started = time.monotonic()
    statuses = _bad_key_burst(int(server.url.rsplit(":", 1)[1]), BAD_KEYS, connections=200)
    elapsed = time.monotonic() - started
    # A backend reports its counts when a transaction ends at least 1 s after its last report; the
    # table's reload every 2 s ends one on each pooled connection.
    time.sleep(3)
    transactions = _transactions(database) - before
    assert statuses == Counter({401: BAD_KEYS}), statuses
    print(f"{BAD_KEYS} distinct bad keys in {elapsed:.1f} s: {transactions} database transactions")
    assert transactions < 50, f"{transactions} database transactions for {BAD_KEYS} bad keys"
    # And a real client is still served.
    reader = httpx.get(f"{server.url}/predictions", headers=server.auth(server.keys.reader), timeout=10)
    assert reader.status_code == 200


def test_an_address_that_fails_too_often_is_held_off_with_429_whatever_its_key(guarded_server) -> None:
    server, _ = guarded_server
    guesser, other = {"X-Forwarded-For": "192.0.2.77"}, {"X-Forwarded-For": "192.0.2.78"}

    def read(key: str, address: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{server.url}/predictions", headers={**server.auth(key), **address}, timeout=10)

    assert [read(f"kdoct_guess-{i}", guesser).status_code for i in range(FAILURE_LIMIT)] == [401] * 5
    held = read("kdoct_guess-next", guesser)
    assert held.status_code == 429, held.text
    assert held.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert held.json()["type"] == PROBLEM_BASE + "too-many-requests"
    assert 1 <= int(held.headers["retry-after"]) <= 60
    # A good key from that address too, on a read and on an upload (refused before its body is read).
    assert read(server.keys.clinic, guesser).status_code == 429
    upload_headers = {**server.auth(), **guesser}
    upload = httpx.post(f"{server.url}/classify", content=b"x", headers=upload_headers, timeout=10)
    assert upload.status_code == 429 and upload.headers["connection"] == "close"
    # Another address is not affected.
    assert read(server.keys.clinic, other).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    refused = _series_value(metrics, 'kdoct_auth_failures_total{reason="rate_limited"}')
    assert refused >= 3


def test_a_key_created_while_serving_works_at_once(guarded_server, repo_root) -> None:
    """`apikey create` and the key's first request right after: 200, never a 401 (an unknown key waits
    for a reload of the table that starts after it arrived)."""
    server, _ = guarded_server
    key = create_key(server.database_url, repo_root, "new-workstation", "read")
    response = httpx.get(f"{server.url}/predictions", headers=server.auth(key), timeout=10)
    assert response.status_code == 200, response.text


def _series_value(text: str, series: str) -> float:
    """The value of one series of an exposition text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
