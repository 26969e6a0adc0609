"""The keyed chain (revision 0006): whoever may INSERT but does not hold the audit key cannot extend
the chain with a link `audit verify` accepts; rows chained by the unkeyed rule before the epoch still
verify; and a check without the key never passes.

The attack (issue 23, case 8): with the API's runtime credentials, read the last row and INSERT one
whose prev_hash and row_hash follow the plain SHA-256 rule. Before the keyed epoch, `audit verify`
said "ok ... chain intact, 1 checkpoints matched"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text

from kdoct_testing.chain import CHAIN_KEY, CHAIN_SECRET, append_unkeyed, has_link_rule
from kdoct_testing.postgres import libpq_url
from service.audit_key import AuditKey
from service.db.anchor import sign
from service.db.audit import verify
from service.db.chain import append_predictions
from service.db.migrate import upgrade
from service.db.session import make_engine
from service.db.tables import ChainEpoch

# What the forged row claims: the old rule outright, or the keyed one with an unkeyed hash.
CLAIMS = ["sha256", "hmac-sha256"]


def _verify_cli(repo_root: Path, url: str, key_file: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDOCT_DATABASE_URL": url}
    env["KDOCT_AUDIT_KEY_FILE"] = str(key_file) if key_file else str(repo_root / "no-such-dir" / "audit.key")
    return subprocess.run(
        [sys.executable, "-m", "service", "audit", "verify", *args],
        capture_output=True,
        text=True,
        cwd=repo_root,
        env=env,
        timeout=60,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.key"
    path.write_text(CHAIN_SECRET.hex() + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.postgres
@pytest.mark.parametrize("claim", CLAIMS)
def test_the_runtime_roles_forged_link_is_reported(
    pg_url, runtime_url, make_rows, key_file, tmp_path, repo_root, claim
) -> None:
    owner = make_engine(pg_url)
    try:
        appended = append_predictions(owner, make_rows(3), key=CHAIN_KEY)  # the service's real rows
    finally:
        owner.dispose()
    checkpoint = sign(CHAIN_KEY, appended.head)  # the service checkpointed its head

    intruder = make_engine(runtime_url)  # the API's runtime credentials, no audit key
    try:
        append_unkeyed(intruder, make_rows(1), claim=claim)
        with intruder.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 4  # the INSERT went in
    finally:
        intruder.dispose()

    engine = make_engine(pg_url)
    try:
        report = verify(engine, [checkpoint], key=CHAIN_KEY)
    finally:
        engine.dispose()
    assert not report.ok and report.broken is not None
    assert report.broken.sequence == 4 and "without the key" in report.broken.reason
    assert report.rows_checked == 3

    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(checkpoint.to_json() + "\n")
    cli = _verify_cli(repo_root, pg_url, key_file, "--anchor-file", str(anchors))
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "BROKEN at sequence 4" in cli.stdout and "chain intact" not in cli.stdout


@pytest.mark.parametrize("claim", CLAIMS)
def test_a_forged_link_in_the_sqlite_store_is_reported(sqlite_url, make_rows, claim) -> None:
    """SQLite has no roles: anyone who may write the file. Without the key, no link they add verifies."""
    engine = make_engine(sqlite_url)
    try:
        append_predictions(engine, make_rows(2), key=CHAIN_KEY)
        append_unkeyed(engine, make_rows(1), claim=claim)
        append_predictions(engine, make_rows(1), key=CHAIN_KEY)  # the service goes on appending after it
        report = verify(engine, key=CHAIN_KEY)
    finally:
        engine.dispose()
    assert not report.ok and report.broken.sequence == 3 and "without the key" in report.broken.reason


def test_a_link_keyed_with_another_audit_key_is_reported(db_url, make_rows) -> None:
    """A replica whose key file differs from the others' (they must share one): its rows do not verify."""
    engine = make_engine(db_url)
    try:
        append_predictions(engine, make_rows(2), key=CHAIN_KEY)
        append_predictions(engine, make_rows(1), key=AuditKey.generate())
        report = verify(engine, key=CHAIN_KEY)
    finally:
        engine.dispose()
    assert not report.ok and report.broken.sequence == 3 and "another audit key" in report.broken.reason


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0005(request, tmp_path) -> str:
    """A database at revision 0005: the unkeyed chain, before the keyed epoch."""
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_fresh_url")
    )
    upgrade(url, "0005")
    return url


def test_rows_of_the_unkeyed_rule_still_verify_after_the_epoch(url_at_0005, make_rows) -> None:
    engine = make_engine(url_at_0005)
    try:
        append_unkeyed(engine, make_rows(3))  # as the service wrote them before revision 0006
        upgrade(url_at_0005)
        with engine.connect() as conn:
            assert conn.execute(select(ChainEpoch.first_sequence, ChainEpoch.rule)).all() == [
                (4, "hmac-sha256")
            ]
            claims = conn.execute(text("SELECT link_rule FROM predictions ORDER BY sequence")).scalars().all()
            assert claims == ["sha256"] * 3
        append_predictions(engine, make_rows(2), key=CHAIN_KEY)
        report = verify(engine, key=CHAIN_KEY)
        assert report.ok and report.rows_checked == 5

        # Without the key: the unkeyed rows are checked, the keyed ones are not, and it does not pass.
        keyless = verify(engine)
        assert not keyless.ok and keyless.broken is None
        assert (keyless.rows_checked, keyless.unverified, keyless.first_unverified) == (3, 2, 4)

        # An unkeyed row after the epoch began, by an owner who may do anything but has no key.
        append_unkeyed(engine, make_rows(1))
        report = verify(engine, key=CHAIN_KEY)
        assert not report.ok and report.broken.sequence == 6 and "'sha256' link rule" in report.broken.reason
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_writer_older_than_the_epoch_cannot_insert_on_postgresql(runtime_url, make_rows) -> None:
    """What the service before revision 0006 inserts (no link_rule) is refused, so during a rolling
    upgrade an old replica spools its rows rather than add unkeyed links to the keyed epoch."""
    engine = make_engine(runtime_url)
    try:
        with engine.connect() as conn:
            assert has_link_rule(conn)
        row = make_rows(1)[0]
        columns = ", ".join([*row, "sequence", "prev_hash", "row_hash"])
        values = ", ".join(f"%({name})s" for name in [*row, "sequence", "prev_hash", "row_hash"])
        params = {**row, "sequence": 1, "prev_hash": "0" * 64, "row_hash": "0" * 64}
        params = {k: psycopg.types.json.Jsonb(v) if isinstance(v, dict) else v for k, v in params.items()}
        with psycopg.connect(libpq_url(runtime_url)) as conn, pytest.raises(psycopg.Error) as refused:
            conn.execute(f"INSERT INTO predictions ({columns}) VALUES ({values})", params)
        assert refused.value.sqlstate == "23502" and "link_rule" in str(refused.value)  # not_null_violation
    finally:
        engine.dispose()


def test_verify_without_the_key_says_it_cannot_verify_the_keyed_links(
    sqlite_url, make_rows, key_file, repo_root
) -> None:
    engine = make_engine(sqlite_url)
    try:
        append_predictions(engine, make_rows(3), key=CHAIN_KEY)
    finally:
        engine.dispose()
    keyless = _verify_cli(repo_root, sqlite_url, None, "--no-checkpoints")
    assert keyless.returncode == 1, keyless.stdout + keyless.stderr
    assert "NOT VERIFIED from sequence 1: 3 links" in keyless.stdout and "chain intact" not in keyless.stdout
    keyed = _verify_cli(repo_root, sqlite_url, key_file, "--no-checkpoints")
    assert keyed.returncode == 0 and "ok: 3 prediction records, chain intact" in keyed.stdout
