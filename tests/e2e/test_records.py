"""End to end, records: a real uvicorn server on PostgreSQL with auth on puts every
answered prediction on record, append-only and hash-chained, survives a PostgreSQL outage without
losing or duplicating a record, refuses callers without the right key, and exposes its metrics
aggregated over two workers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
import records_fixtures
from prometheus_client.mmap_dict import MmapedDict
from psycopg.types.json import Json
from records_fixtures import RecordsServer, create_key

from service.problems import PROBLEM_MEDIA_TYPE

pytestmark = pytest.mark.postgres

# The fixtures live in records_fixtures.py; naming them here registers them for this module.
pg_server = records_fixtures.pg_server
outage_server = records_fixtures.outage_server


@pytest.fixture(scope="module")
def uploads(sample_jpegs) -> list[bytes]:
    return [path.read_bytes() for paths in sample_jpegs.values() for path in paths[:8]]


def classify(
    server: RecordsServer, data: bytes, key: str | None = None, headers: dict | None = None, **params
) -> httpx.Response:
    headers = {**(server.auth(key) if key != "" else {}), **(headers or {})}
    return httpx.post(
        f"{server.url}/classify", files={"file": ("scan", data)}, params=params, headers=headers, timeout=60
    )


def classify_concurrently(
    server: RecordsServer, uploads: list[bytes], connections: int
) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        # No keep-alive: every request is a new connection, which either worker may accept.
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=server.url, headers=server.auth(), timeout=60, limits=limits
        ) as client:
            return await asyncio.gather(
                *(client.post("/classify", files={"file": ("s", d)}) for d in uploads)
            )

    return asyncio.run(burst())


def stored(database_url: str) -> dict[str, str]:
    """prediction id -> input sha256 of every row."""
    with psycopg.connect(_libpq(database_url)) as conn:
        return {str(row_id): sha for row_id, sha in conn.execute("SELECT id, input_sha256 FROM predictions")}


def on_record(database_url: str, prediction_ids, timeout_s: float = 15.0) -> None:
    """Until every answered id is a row: answers go out once their record is journaled (fsync'd), the
    insert follows (KDOCT_RECORD_ACK=spool, docs/RECORDS.md), so a row may trail its answer."""
    wanted = set(prediction_ids)
    deadline = time.monotonic() + timeout_s
    while missing := wanted - set(stored(database_url)):
        assert time.monotonic() < deadline, f"{len(missing)} answered predictions never reached the database"
        time.sleep(0.05)


def _libpq(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def metric_samples(text: str, name: str) -> dict[str, float]:
    """'{labels}' -> value for every sample line of `name` in an exposition text."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            samples[series[len(name) :]] = float(value)
    return samples


def test_every_answer_is_one_row_with_the_upload_sha256_across_two_workers(pg_server, uploads):
    # /health/ready is 200 as soon as one worker is ready: wait for the second one too.
    _wait_for_ready_workers(pg_server.metrics_dir, 2)
    before = stored(pg_server.database_url)
    responses = classify_concurrently(pg_server, uploads, connections=8)
    assert [r.status_code for r in responses] == [200] * len(uploads), responses[0].text
    answered = {
        r.json()["prediction_id"]: hashlib.sha256(data).hexdigest()
        for r, data in zip(responses, uploads, strict=True)
    }
    assert all(r.json()["input"]["sha256"] == answered[r.json()["prediction_id"]] for r in responses)

    on_record(pg_server.database_url, answered)
    rows = stored(pg_server.database_url)
    new_rows = {row_id: sha for row_id, sha in rows.items() if row_id not in before}
    assert new_rows == answered  # exactly one row per answer, none extra, with the uploaded bytes' hash

    # The rows may be on record before any worker's next checkpoint (every 1 s here) covers them, and
    # `audit verify` wants the anchor file: wait for the checkpoint of the chain's head.
    wait_for_checkpoint(pg_server, newest_sequence(pg_server.database_url))
    verified = pg_server.cli("audit", "verify")
    assert verified.returncode == 0 and f"ok: {len(rows)} prediction records" in verified.stdout

    # Both workers answered, and /metrics sums what each worker's own files hold.
    per_worker = _classify_requests_per_worker(pg_server.metrics_dir)
    assert len([count for count in per_worker.values() if count > 0]) == 2, per_worker
    exposed = metric_samples(
        httpx.get(f"{pg_server.url}/metrics").text, "kdoct_request_duration_seconds_count"
    )
    classify_ok = next(
        v for series, v in exposed.items() if 'route="/classify"' in series and 'status="200"' in series
    )
    assert classify_ok == sum(per_worker.values()) >= len(uploads)


def _wait_for_ready_workers(metrics_dir: Path, workers: int, timeout_s: float = 120.0) -> None:
    """Until `workers` processes have set kdoct_model_ready to 1 in their own metric files."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = set()
        for path in metrics_dir.glob("gauge_*.db"):
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
                if json.loads(key)[0] == "kdoct_model_ready" and value == 1:
                    ready.add(path.stem.split("_")[-1])
        if len(ready) >= workers:
            return
        assert time.monotonic() < deadline, f"only {len(ready)} of {workers} workers ready"
        time.sleep(0.2)


def _classify_requests_per_worker(metrics_dir: Path) -> dict[str, float]:
    counts = {}
    for path in metrics_dir.glob("histogram_*.db"):
        pid = path.stem.split("_")[-1]
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            if (
                # A worker's file holds per-bucket (not cumulative) counts; their sum is its count.
                sample == "kdoct_request_duration_seconds_bucket"
                and labels.get("route") == "/classify"
                and labels.get("status") == "200"
            ):
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def test_predictions_are_append_only_and_audit_verify_catches_a_row_altered_behind_its_back(
    pg_server, uploads
):
    response = classify(pg_server, uploads[0])
    assert response.status_code == 200
    prediction_id = response.json()["prediction_id"]
    on_record(pg_server.database_url, [prediction_id])
    with psycopg.connect(_libpq(pg_server.database_url), autocommit=True) as conn:
        for statement in (
            "UPDATE predictions SET label = 'cnv' WHERE id = %s",
            "DELETE FROM predictions WHERE id = %s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement, (prediction_id,))
        sequence, confidence = conn.execute(
            "SELECT sequence, confidence FROM predictions WHERE id = %s", (prediction_id,)
        ).fetchone()

        # A superuser, bypassing the trigger knowingly, alters the row; the chain shows it.
        def alter(value: float) -> None:
            conn.execute("ALTER TABLE predictions DISABLE TRIGGER USER")
            conn.execute("UPDATE predictions SET confidence = %s WHERE id = %s", (value, prediction_id))
            conn.execute("ALTER TABLE predictions ENABLE TRIGGER USER")

        alter(0.999)
        try:
            broken = pg_server.cli("audit", "verify")
            assert broken.returncode == 1
            assert f"BROKEN at sequence {sequence} (prediction {prediction_id})" in broken.stdout
        finally:
            alter(confidence)  # the module's other tests share this database
    assert pg_server.cli("audit", "verify").returncode == 0


def _checkpoints(server: RecordsServer) -> list[dict]:
    if not server.anchor_file.exists():
        return []
    return [json.loads(line) for line in server.anchor_file.read_text().splitlines() if line.strip()]


def newest_sequence(database_url: str) -> int:
    with psycopg.connect(_libpq(database_url)) as conn:
        return conn.execute("SELECT max(sequence) FROM predictions").fetchone()[0]


def wait_for_checkpoint(server: RecordsServer, sequence: int, timeout_s: float = 15.0) -> None:
    """Until a worker has checkpointed a link at or past `sequence` (each does every 1 s here)."""
    deadline = time.monotonic() + timeout_s
    while not any(line["sequence"] >= sequence for line in _checkpoints(server)):
        assert time.monotonic() < deadline, f"no checkpoint of sequence {sequence}: {_checkpoints(server)}"
        time.sleep(0.1)


def test_the_servers_checkpoints_catch_a_truncated_tail(pg_server, uploads):
    response = classify(pg_server, uploads[1])
    assert response.status_code == 200
    prediction_id = response.json()["prediction_id"]
    on_record(pg_server.database_url, [prediction_id])
    with psycopg.connect(_libpq(pg_server.database_url), autocommit=True) as conn:
        sequence = conn.execute(
            "SELECT sequence FROM predictions WHERE id = %s", (prediction_id,)
        ).fetchone()[0]
    # The worker that wrote the row checkpoints it within its interval (1 s here).
    wait_for_checkpoint(pg_server, sequence)
    assert pg_server.cli("audit", "verify").returncode == 0
    # The same lines go to the log (to be shipped off the host), from each of the two workers.
    logged = [
        json.loads(line.split("chain checkpoint ", 1)[1])
        for line in pg_server.log.read_text().splitlines()
        if "kdoct.anchor: chain checkpoint {" in line
    ]
    assert logged and all(line in _checkpoints(pg_server) for line in logged)

    # A superuser removes the newest rows behind the triggers' back: the chain alone still verifies.
    with psycopg.connect(_libpq(pg_server.database_url), autocommit=True) as conn:
        columns = [row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'predictions' "
            "ORDER BY ordinal_position"
        )]  # fmt: skip
        tail = conn.execute("SELECT * FROM predictions WHERE sequence >= %s", (sequence,)).fetchall()
        conn.execute("ALTER TABLE predictions DISABLE TRIGGER USER")
        conn.execute("DELETE FROM predictions WHERE sequence >= %s", (sequence,))
        try:
            assert pg_server.cli("audit", "verify", "--no-checkpoints").returncode == 0
            truncated = pg_server.cli("audit", "verify")
            assert truncated.returncode == 1, truncated.stdout
            assert "truncated" in truncated.stdout and f"chain ends at {sequence - 1}" in truncated.stdout
        finally:  # the module's other tests share this database
            placeholders = ", ".join(["%s"] * len(columns))
            for row in tail:
                conn.execute(
                    f"INSERT INTO predictions ({', '.join(columns)}) VALUES ({placeholders})",
                    [Json(value) if isinstance(value, dict) else value for value in row],
                )
            conn.execute("ALTER TABLE predictions ENABLE TRIGGER USER")
    assert pg_server.cli("audit", "verify").returncode == 0


def test_request_ids_are_stored_keyed_and_every_read_is_logged_with_its_reader(pg_server, uploads):
    mrn = f"MRN-{uuid.uuid4().int % 10**10:010d}"  # what a careless integrator might send
    response = classify(pg_server, uploads[2], headers={"X-Request-ID": mrn})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == mrn
    prediction_id = response.json()["prediction_id"]
    on_record(pg_server.database_url, [prediction_id])

    with psycopg.connect(_libpq(pg_server.database_url)) as conn:
        stored_id = conn.execute(
            "SELECT request_id FROM predictions WHERE id = %s", (prediction_id,)
        ).fetchone()[0]
        assert stored_id.startswith("hmac-sha256:") and len(stored_id) == len("hmac-sha256:") + 64
        for table in ("predictions", "prediction_reads", "feedback"):
            leaked = conn.execute(f"SELECT count(*) FROM {table} t WHERE t::text LIKE %s", (f"%{mrn[4:]}%",))
            assert leaked.fetchone()[0] == 0, table

    reader = pg_server.auth(pg_server.keys.reader)
    found = httpx.get(f"{pg_server.url}/predictions", params={"request_id": mrn}, headers=reader).json()
    assert [item["id"] for item in found["items"]] == [prediction_id]
    assert found["items"][0]["request_id"] == stored_id
    other = httpx.get(f"{pg_server.url}/predictions", params={"request_id": mrn + "0"}, headers=reader)
    assert other.status_code == 200 and other.json()["items"] == []
    one = httpx.get(
        f"{pg_server.url}/predictions/{prediction_id}", headers={**reader, "X-Request-ID": "audit-1"}
    )
    assert one.status_code == 200

    with psycopg.connect(_libpq(pg_server.database_url)) as conn:
        reads = conn.execute(
            "SELECT client_id, route, request_id FROM prediction_reads WHERE prediction_id = %s "
            "ORDER BY read_at",
            (prediction_id,),
        ).fetchall()
    assert [(client, route) for client, route, _ in reads] == [
        ("reader", "/predictions"),
        ("reader", "/predictions/{prediction_id}"),
    ]
    assert all(request_id.startswith("hmac-sha256:") for _, _, request_id in reads)


def test_missing_wrong_unscoped_and_revoked_keys_are_refused_and_never_logged(pg_server, uploads):
    wrong = "kdoct_" + uuid.uuid4().hex
    temporary = create_key(pg_server.database_url, pg_server.repo_root, "temp-workstation", "classify")
    assert classify(pg_server, uploads[0], key=temporary).status_code == 200  # now cached by the worker

    refusals = {
        "missing": classify(pg_server, uploads[0], key=""),
        "invalid": classify(pg_server, uploads[0], key=wrong),
        "forbidden": classify(pg_server, uploads[0], key=pg_server.keys.reader),
        "invalid on a read route": httpx.get(f"{pg_server.url}/predictions", headers=pg_server.auth(wrong)),
    }
    assert pg_server.cli("apikey", "revoke", "temp-workstation").returncode == 0
    refusals["revoked"] = _until_refused(pg_server, uploads[0], temporary, timeout_s=15)

    for reason, response in refusals.items():
        expected = 403 if reason == "forbidden" else 401  # forbidden: a valid key without the scope
        assert response.status_code == expected, (reason, response.text)
        assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert response.json()["status"] == expected
    assert refusals["revoked"].json()["detail"] == "this API key has been revoked"
    assert refusals["missing"].headers["www-authenticate"].startswith("Bearer")

    # The reader key reads; it only lacks classify.
    assert (
        httpx.get(f"{pg_server.url}/predictions", headers=pg_server.auth(pg_server.keys.reader)).status_code
        == 200
    )
    failures = metric_samples(httpx.get(f"{pg_server.url}/metrics").text, "kdoct_auth_failures_total")
    for reason in ("missing", "invalid", "forbidden", "revoked"):
        assert failures[f'{{reason="{reason}"}}'] >= 1
    log = pg_server.log.read_text()
    for key in (wrong, temporary, pg_server.keys.clinic, pg_server.keys.reader, pg_server.keys.admin):
        assert key not in log and key.removeprefix("kdoct_") not in log


def _until_refused(server: RecordsServer, data: bytes, key: str, timeout_s: float) -> httpx.Response:
    """Revocation reaches each worker at its next reload of the key table (KDOCT_API_KEY_REFRESH_S, 2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = classify(server, data, key=key)
        if response.status_code != 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


EVERY_METRIC = (
    "kdoct_request_duration_seconds_bucket",
    "kdoct_inference_duration_seconds_bucket",
    "kdoct_queue_wait_seconds_bucket",
    "kdoct_batch_size_bucket",
    "kdoct_queue_depth",
    "kdoct_predictions_total",
    "kdoct_prediction_confidence_bucket",
    "kdoct_second_opinions_total",
    "kdoct_referrals_total",
    "kdoct_feedback_total",
    "kdoct_rejected_requests_total",
    "kdoct_db_write_duration_seconds_bucket",
    "kdoct_db_write_failures_total",
    "kdoct_spool_backlog",
    "kdoct_auth_failures_total",
    "kdoct_model_info",
    "kdoct_model_ready",
)


def test_metrics_exposes_every_issue_metric_after_a_few_requests(pg_server, uploads):
    answer = classify(pg_server, uploads[1], second_opinion="always")
    assert answer.status_code == 200
    # Its row may trail the answer (KDOCT_RECORD_ACK=spool): the next test counts rows from a snapshot.
    on_record(pg_server.database_url, [answer.json()["prediction_id"]])
    assert classify(pg_server, b"not an image" * 64).status_code == 415
    models = {
        m["role"]: m for m in httpx.get(f"{pg_server.url}/models", headers=pg_server.auth()).json()["models"]
    }
    text = httpx.get(f"{pg_server.url}/metrics").text

    missing = [name for name in EVERY_METRIC if not metric_samples(text, name)]
    assert missing == []
    info = metric_samples(text, "kdoct_model_info")
    for role, model in models.items():
        name, version, sha256 = model["name"], model["version"], model["sha256"]
        series = f'{{name="{name}",role="{role}",sha256="{sha256}",version="{version}"}}'
        assert info[series] == 1.0, info
    assert metric_samples(text, "kdoct_model_ready") == {'{role="student"}': 1.0, '{role="teacher"}': 1.0}
    assert metric_samples(text, "kdoct_db_write_duration_seconds_count")[""] >= 1
    rejected = metric_samples(text, "kdoct_rejected_requests_total")
    assert rejected['{reason="unsupported_media_type"}'] >= 1
    opinions = metric_samples(text, "kdoct_second_opinions_total")
    assert sum(opinions.values()) >= 1
    # No unbounded label values: no prediction id, request id or key.
    for value in (answer.json()["prediction_id"], answer.json()["request_id"], pg_server.keys.clinic):
        assert value not in text


def test_postgresql_outage_loses_and_duplicates_no_answered_prediction(outage_server, uploads):
    server, cluster = outage_server
    before = stored(server.database_url)
    answered: dict[str, str] = {}

    def send(count: int, offset: int) -> None:
        for data in uploads[offset : offset + count]:
            response = classify(server, data)
            assert response.status_code == 200, response.text  # the spool is writable: never a 503
            answered[response.json()["prediction_id"]] = hashlib.sha256(data).hexdigest()

    send(4, 0)
    cluster.stop()
    try:
        send(8, 4)
        spooled = list(server.spool_dir.glob("spool-*.jsonl"))
        assert spooled, "records answered during the outage must be on the spool"
    finally:
        cluster.start()
    send(4, 12)

    # The writer probes the database again within a couple of seconds and replays the spool.
    deadline = time.monotonic() + 30
    while list(server.spool_dir.glob("spool-*.jsonl")) or len(stored(server.database_url)) < len(before) + 16:
        assert time.monotonic() < deadline, f"spool not drained: {list(server.spool_dir.iterdir())}"
        time.sleep(0.25)
    rows = stored(server.database_url)
    assert {row_id: sha for row_id, sha in rows.items() if row_id not in before} == answered
    assert len(rows) == len(before) + 16
    # Every row may have come in by replay just now: the checkpoint follows within its interval (1 s).
    wait_for_checkpoint(server, newest_sequence(server.database_url))
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout
    backlog = metric_samples(httpx.get(f"{server.url}/metrics").text, "kdoct_spool_backlog")
    assert backlog[""] == 0.0


# Safety bound, not a timing test: the service answers within its record deadline (5 s by default)
# plus inference; a hang would last the whole 20 s of the lock.
STALL_ANSWER_BOUND_S = 12.0


def test_a_lock_held_on_predictions_for_20_s_delays_no_answer_and_loses_or_doubles_no_record(
    pg_server, uploads
):
    """ACCESS EXCLUSIVE on the predictions table for 20 s under load: every answer arrives within its
    deadline (statement/lock timeouts and the record deadline send records to the spool), readiness
    says the records go to the spool meanwhile, and after release the table holds each answer once."""
    _wait_for_ready_workers(pg_server.metrics_dir, 2)
    before = stored(pg_server.database_url)
    answered: dict[str, str] = {}
    latencies: list[float] = []
    readiness: list[tuple[int, str | None]] = []

    async def load(until: float) -> None:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=pg_server.url, headers=pg_server.auth(), timeout=60, limits=limits
        ) as client:

            async def sender(offset: int) -> None:
                index = offset
                while time.monotonic() < until:
                    data = uploads[index % len(uploads)]
                    index += 4
                    started = time.monotonic()
                    response = await client.post("/classify", files={"file": ("scan", data)})
                    latencies.append(time.monotonic() - started)
                    assert response.status_code == 200, response.text
                    answered[response.json()["prediction_id"]] = hashlib.sha256(data).hexdigest()

            async def prober() -> None:
                while time.monotonic() < until:
                    await asyncio.sleep(1.0)
                    response = await client.get("/health/ready")
                    readiness.append((response.status_code, response.json().get("records")))

            await asyncio.gather(*(sender(i) for i in range(4)), prober())

    with psycopg.connect(_libpq(pg_server.database_url)) as locker:
        locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")  # held until the rollback
        try:
            asyncio.run(load(time.monotonic() + 20))
        finally:
            locker.rollback()

    assert latencies and max(latencies) < STALL_ANSWER_BOUND_S, f"slowest answer {max(latencies):.1f} s"
    assert all(status == 200 for status, _ in readiness), readiness
    assert "spool" in {records for _, records in readiness}, readiness
    deadline = time.monotonic() + 60
    while list(pg_server.spool_dir.glob("spool-*.jsonl")) or len(stored(pg_server.database_url)) < len(
        before
    ) + len(answered):
        assert time.monotonic() < deadline, f"spool not drained: {list(pg_server.spool_dir.iterdir())}"
        time.sleep(0.25)
    rows = stored(pg_server.database_url)
    assert {row_id: sha for row_id, sha in rows.items() if row_id not in before} == answered
    verified = pg_server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout


def _rss_of_processes_in(workdir: Path) -> int:
    """Resident memory of every process running in workdir (the server and its workers)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) != workdir:
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        total += next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
        )
    return total


def _unauthenticated_upload_status(port: int, authorization: str) -> int:
    """Declare a 60 MiB multipart upload, send none of it, and return the status the server answers."""
    head = (
        "POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=kdoct\r\n"
        f"Content-Length: {60 << 20}\r\n{authorization}\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1])


def test_a_thousand_unauthenticated_60_mib_uploads_are_refused_before_their_bodies(pg_server) -> None:
    """Each declares 60 MiB (under the 64 MiB upload cap) and sends no body: the service can only
    answer them if it authenticates from the headers. Safety bounds, not timings: a server that waited
    for the bodies would time every request out (10 s each)."""
    port = int(pg_server.url.rsplit(":", 1)[1])
    workdir = pg_server.spool_dir.parent
    before = _rss_of_processes_in(workdir)
    authorizations = [
        "",
        "Authorization: Bearer kdoct_not-a-key\r\n",
        "Authorization: Basic dXNlcjpwYXNz\r\n",
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(lambda i: _unauthenticated_upload_status(port, authorizations[i % 3]), range(1000))
        )
    elapsed = time.monotonic() - started
    assert statuses == [401] * 1000, sorted(set(statuses))
    assert elapsed < 120, f"1,000 refusals took {elapsed:.0f} s"
    growth = _rss_of_processes_in(workdir) - before
    assert growth < 100 << 20, f"the server grew by {growth >> 20} MiB"
    # And a real client is still served.
    assert httpx.get(f"{pg_server.url}/health/live", timeout=10).status_code == 200
