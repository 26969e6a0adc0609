"""A promotion under load on a real server (issue 26's acceptance): two uvicorn workers on PostgreSQL, a
candidate shadowing every request, 2,000 requests over eight keep-alive connections (each held by one
worker for its life), `python -m service model promote` in the middle. Every answer is 2xx, each
connection's model.sha256 switches exactly once and never back, each worker switches once; then the
rollback over HTTP returns every worker to the first student, and `audit verify` checks the chain and
both ledgers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import records_fixtures
from records_fixtures import RecordsServer, prepare_database, serve, service_cli

from kdoct.bundle import load_bundle
from kdoct_testing.bundles import build_candidate_bundle
from kdoct_testing.postgres import create_database, drop_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REQUESTS, CONNECTIONS = 2000, 8
PROMOTE_AFTER = 400
THRESHOLDS = {
    "KDOCT_PROMOTE_MIN_SHADOWED": "20",
    "KDOCT_PROMOTE_MIN_AGREEMENT": "0",
    "KDOCT_PROMOTE_MIN_FEEDBACK_PER_CLASS": "0",
}


@pytest.fixture(scope="module")
def candidate(e2e_bundles, sample_dir: Path) -> Path:
    return build_candidate_bundle(e2e_bundles["student"].parent, sample_dir)


@pytest.fixture(scope="module")
def rollout_server(e2e_bundles, candidate, tmp_path_factory, repo_root) -> Iterator[RecordsServer]:
    name, database_url = create_database()
    try:
        keys = prepare_database(database_url, repo_root)
        workdir = tmp_path_factory.mktemp("rollout-server")
        settings = {"KDOCT_SHADOW_BUNDLE": str(candidate), "KDOCT_MODEL_POLL_S": "0.5", **THRESHOLDS}
        with serve(e2e_bundles, workdir, database_url, keys, repo_root, workers=2, **settings) as server:
            yield server
    finally:
        drop_database(name)


def _operator(server: RecordsServer, e2e_bundles, *args: str):
    """`python -m service ARGS` with the server's database, audit key and settings."""
    return service_cli(
        *args, database_url=server.database_url, cwd=server.repo_root,
        KDOCT_STUDENT_BUNDLE=str(e2e_bundles["student"]), KDOCT_AUDIT_KEY_FILE=str(server.audit_key_file),
        KDOCT_ANCHOR_FILE=str(server.anchor_file), **THRESHOLDS,
    )  # fmt: skip


def test_a_promotion_under_load_switches_each_worker_once_without_an_error(
    rollout_server: RecordsServer, e2e_bundles, candidate, sample_jpegs
):
    server = rollout_server
    first, second = load_bundle(e2e_bundles["student"]).sha256, load_bundle(candidate).sha256
    images = [path.read_bytes() for paths in sample_jpegs.values() for path in paths[:2]]
    # Evidence first: one request at a time, each shadowed (the candidate yields while requests wait),
    # until the agreement counts what the promotion requires.
    with httpx.Client(base_url=server.url, headers=server.auth(), timeout=60) as client:
        for data in images * 4:
            assert (
                client.post("/classify", files={"file": ("scan.jpeg", data, "image/jpeg")}).status_code == 200
            )
        shadowed = _wait_for(
            lambda: client.get(f"/models/candidates/{second}/agreement").json()["shadowed"], 20
        )
        assert shadowed >= int(THRESHOLDS["KDOCT_PROMOTE_MIN_SHADOWED"])
    done, lock = [0], threading.Lock()
    promoted = threading.Event()
    promotion: list = []

    def connection(index: int) -> list[tuple[int, str | None]]:
        answers = []
        # One connection per client, kept alive: its requests are all served by one worker.
        with httpx.Client(
            base_url=server.url, headers=server.auth(), timeout=60, limits=httpx.Limits(max_connections=1)
        ) as client:
            for number in range(REQUESTS // CONNECTIONS):
                data = images[(index + number) % len(images)]
                response = client.post("/classify", files={"file": ("scan.jpeg", data, "image/jpeg")})
                body = response.json()
                sha256 = body["model"]["sha256"] if response.status_code == 200 else body.get("detail")
                answers.append((response.status_code, sha256))
                with lock:
                    done[0] += 1
                    start_promotion = done[0] == PROMOTE_AFTER
                if start_promotion:
                    threading.Thread(target=lambda: (promotion.append(_promote()), promoted.set())).start()
        return answers

    def _promote():
        return _operator(server, e2e_bundles, "model", "promote", "--bundle", str(candidate))

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        per_connection = list(pool.map(connection, range(CONNECTIONS)))
    assert promoted.wait(60)
    assert promotion[0].returncode == 0, promotion[0].stderr
    statuses = [status for answers in per_connection for status, _ in answers]
    assert len(statuses) == REQUESTS
    refused = [answer for answers in per_connection for answer in answers if not 200 <= answer[0] < 300]
    assert refused == []
    for answers in per_connection:
        shas = [sha for _, sha in answers]
        switches = sum(1 for a, b in zip(shas, shas[1:], strict=False) if a != b)
        assert shas[0] == first and shas[-1] == second and switches == 1, shas
    log = server.log.read_text()
    assert log.count("now serving test-student 0.0.2") == 2  # each worker, once

    # The rollback over HTTP (admin scope; the clinic's key may not), every worker back on the first.
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/models/rollback", headers=server.auth()).status_code == 403
        rolled = client.post("/models/rollback", headers=server.auth(server.keys.admin))
        assert rolled.status_code == 200, rolled.text
        assert rolled.json()["actor"] == "api:ops"
    assert _wait_for_log(server, "now serving test-student 0.0.1", 2)
    with httpx.Client(base_url=server.url, headers=server.auth(), timeout=30) as client:
        for _ in range(8):
            response = client.post("/classify", files={"file": ("scan.jpeg", images[0], "image/jpeg")})
            assert response.json()["model"]["sha256"] == first

    status = _operator(server, e2e_bundles, "model", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith(f"serving {first}")
    assert "rollback by api:ops" in status.stdout and "promote by cli:" in status.stdout
    verified = _operator(server, e2e_bundles, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 model_events rows, chain intact" in verified.stdout
    assert "shadow_results rows, chain intact" in verified.stdout


def _wait_for(read, at_least: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (value := read()) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _wait_for_log(server: RecordsServer, needle: str, count: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.log.read_text().count(needle) >= count:
            return True
        time.sleep(0.1)
    return False


# Registered for this module: the e2e fixtures this test reuses.
assert records_fixtures
