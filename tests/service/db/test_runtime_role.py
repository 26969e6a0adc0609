"""The audit log the application cannot rewrite: on real PostgreSQL, a login role in
kdoct_runtime does the service's work (append predictions and feedback, read them and the keys) and
is refused every way of rewriting the records; feedback is append-only even for the owner; the
service notices a privileged role; `db downgrade` below the protection asks for a flag."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.postgres import libpq_url as _libpq
from service.db.chain import append_predictions
from service.db.roles import audit_log_rewrite_powers
from service.db.session import make_engine
from service.db.tables import DicomExportAttempt, Feedback, PredictionRead

FEEDBACK = Feedback.__table__
READS = PredictionRead.__table__
ATTEMPTS = DicomExportAttempt.__table__

# Each is something a compromised service could do to its own history; 42501 = insufficient_privilege.
REWRITES = [
    "UPDATE predictions SET label = 'normal'",
    "DELETE FROM predictions",
    "TRUNCATE predictions",
    "ALTER TABLE predictions DISABLE TRIGGER ALL",
    "ALTER TABLE predictions DISABLE TRIGGER predictions_no_update_delete",
    "DROP TRIGGER predictions_no_update_delete ON predictions",
    "UPDATE feedback SET label = 'normal'",
    "DELETE FROM feedback",
    "TRUNCATE feedback",
    "ALTER TABLE feedback DISABLE TRIGGER ALL",
    "UPDATE prediction_reads SET client_id = 'someone-else'",
    "DELETE FROM prediction_reads",
    "TRUNCATE prediction_reads",
    "ALTER TABLE prediction_reads DISABLE TRIGGER ALL",
    "UPDATE api_clients SET revoked_at = NULL",
    "INSERT INTO api_clients (name, key_hash, key_prefix, scopes, created_at) "
    "VALUES ('intruder', repeat('0', 64), 'kdoct_x', '[\"admin\"]', now())",
    "DROP TABLE predictions",
    # Moving the start of the keyed epoch would let an unkeyed row pass (revision 0006).
    "UPDATE chain_epochs SET first_sequence = first_sequence + 100",
    "DELETE FROM chain_epochs",
    "TRUNCATE chain_epochs",
    "INSERT INTO chain_epochs (first_sequence, rule, started_at) VALUES (1000, 'sha256', now())",
    "ALTER TABLE chain_epochs DISABLE TRIGGER ALL",
    "ALTER TABLE predictions ALTER COLUMN link_rule SET DEFAULT 'sha256'",
    # The DICOM node's delivery attempts (revision 0007).
    "UPDATE dicom_export_attempts SET outcome = 'delivered'",
    "DELETE FROM dicom_export_attempts",
    "TRUNCATE dicom_export_attempts",
    "ALTER TABLE dicom_export_attempts DISABLE TRIGGER ALL",
    # The model lifecycle's ledgers (revision 0008).
    "UPDATE shadow_results SET candidate_label = 'normal'",
    "DELETE FROM shadow_results",
    "TRUNCATE shadow_results",
    "ALTER TABLE shadow_results DISABLE TRIGGER ALL",
    "UPDATE model_events SET to_path = '/elsewhere'",
    "DELETE FROM model_events",
    "TRUNCATE model_events",
    "ALTER TABLE model_events DISABLE TRIGGER ALL",
]


def _read_row(prediction_id) -> dict:
    return {
        "id": uuid.uuid4(),
        "prediction_id": prediction_id,
        "read_at": datetime.now(UTC),
        "client_id": "ward-7",
        "request_id": "hmac-sha256:" + "0" * 64,
        "route": "/predictions/{prediction_id}",
    }


def _attempt_row(prediction_id) -> dict:
    return {
        "id": uuid.uuid4(),
        "prediction_id": prediction_id,
        "kind": "sr",
        "destination": "cstore PACS@10.0.0.5:104",
        "attempt": 1,
        "outcome": "failed",
        "detail": "association aborted",
        "created_at": datetime.now(UTC),
    }


def _seed(url: str, make_rows) -> str:
    """Two chained predictions, one feedback row, one read-log row and one export attempt, written by the
    owner; the first prediction's id."""
    engine = make_engine(url)
    try:
        rows = make_rows(2)
        append_predictions(engine, rows, new_ids=True, key=CHAIN_KEY)
        with engine.begin() as conn:
            conn.execute(
                insert(FEEDBACK).values(
                    id=uuid.uuid4(), prediction_id=rows[0]["id"], label="cnv", created_at=datetime.now(UTC)
                )
            )
            conn.execute(insert(READS).values(**_read_row(rows[0]["id"])))
            conn.execute(insert(ATTEMPTS).values(**_attempt_row(rows[0]["id"])))
        return str(rows[0]["id"])
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_runtime_role_does_the_services_work(pg_url, runtime_url, make_rows) -> None:
    prediction_id = _seed(pg_url, make_rows)
    engine = make_engine(runtime_url)
    try:
        assert (
            append_predictions(engine, make_rows(3), new_ids=True, key=CHAIN_KEY).count == 3
        )  # chain lock, read, insert
        with engine.begin() as conn:
            conn.execute(
                insert(FEEDBACK).values(
                    id=uuid.uuid4(),
                    prediction_id=uuid.UUID(prediction_id),
                    label="dme",
                    created_at=datetime.now(UTC),
                )
            )
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 5
            assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == 2
            conn.execute(insert(READS).values(**_read_row(uuid.UUID(prediction_id))))
            assert conn.execute(text("SELECT count(*) FROM prediction_reads")).scalar() == 2
            conn.execute(insert(ATTEMPTS).values(**_attempt_row(uuid.UUID(prediction_id))))
            assert conn.execute(text("SELECT count(*) FROM dicom_export_attempts")).scalar() == 2
            conn.execute(text("SELECT name, key_hash, scopes, revoked_at FROM api_clients"))
        assert audit_log_rewrite_powers(engine) == []
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("statement", REWRITES)
def test_the_runtime_role_cannot_rewrite_the_records(pg_url, runtime_url, make_rows, statement) -> None:
    _seed(pg_url, make_rows)
    with psycopg.connect(_libpq(runtime_url)) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(statement)
        assert refused.value.sqlstate == "42501", (statement, refused.value.sqlstate, str(refused.value))
    with psycopg.connect(_libpq(pg_url)) as owner:
        assert owner.execute("SELECT count(*) FROM predictions").fetchone()[0] == 2


@pytest.mark.postgres
def test_the_owner_is_reported_as_able_to_rewrite(pg_url) -> None:
    engine = make_engine(pg_url)  # the test cluster's superuser, owner of the tables
    try:
        powers = audit_log_rewrite_powers(engine)
    finally:
        engine.dispose()
    assert "owns predictions" in powers and "TRUNCATE on predictions" in powers


@pytest.mark.postgres
def test_a_role_that_may_add_a_chain_epoch_is_reported(pg_url, runtime_url) -> None:
    """A new epoch could declare unkeyed links valid again: INSERT there is a power to rewrite."""
    role = make_url(runtime_url).username
    with psycopg.connect(_libpq(pg_url), autocommit=True) as admin:
        admin.execute(f'GRANT INSERT ON chain_epochs TO "{role}"')
        engine = make_engine(runtime_url)
        try:
            assert audit_log_rewrite_powers(engine) == ["INSERT on chain_epochs"]
        finally:
            engine.dispose()
            admin.execute(f'REVOKE INSERT ON chain_epochs FROM "{role}"')  # or the role cannot be dropped


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("feedback", "feedback is append-only"),
        ("prediction_reads", "reads are append-only"),
        ("dicom_export_attempts", "export attempts are append-only"),
    ],
)
def test_feedback_reads_and_attempts_are_append_only_even_for_the_owner(
    db_url, make_rows, table, message
) -> None:
    prediction_id = _seed(db_url, make_rows)
    column = "outcome" if table == "dicom_export_attempts" else "client_id"
    engine = make_engine(db_url)
    try:
        for statement in (f"UPDATE {table} SET {column} = 'someone-else'", f"DELETE FROM {table}"):
            with pytest.raises(Exception, match=message), engine.begin() as conn:
                conn.execute(text(statement))
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT {column} FROM {table}")).scalar() != "someone-else"
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
    finally:
        engine.dispose()
    assert prediction_id


def test_downgrade_below_the_protection_asks_for_a_flag(sqlite_url, repo_root) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "KDOCT_DATABASE_URL": sqlite_url}
        return subprocess.run(
            [sys.executable, "-m", "service", "db", *args],
            capture_output=True,
            text=True,
            cwd=repo_root,
            env=env,
        )

    for target in ("base", "0003", "0004", "0005", "0006", "-1"):
        refused = run("downgrade", target)
        assert refused.returncode == 2 and "--allow-records-downgrade" in refused.stderr
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        assert run("downgrade", "base", "--allow-records-downgrade").returncode == 0
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_the_service_refuses_the_owner_when_told_to_and_logs_it_otherwise(
    pg_url, runtime_url, caplog
) -> None:
    from kdoct.errors import ConfigError
    from service.app import _check_database_role

    owner, runtime = make_engine(pg_url), make_engine(runtime_url)
    try:
        with pytest.raises(ConfigError, match="could rewrite the audit log"):
            _check_database_role(owner, "refuse")
        with caplog.at_level("ERROR", logger="service.app"):
            _check_database_role(owner, "warn")
        assert "could rewrite the audit log" in caplog.text
        _check_database_role(runtime, "refuse")  # the runtime role passes
    finally:
        owner.dispose()
        runtime.dispose()
