"""Files the service creates are 0600 and its directories 0700, whatever the umask (issue 23, case 14:
the SQLite database was created 0644): the database and its -wal/-shm, the migration lock, the audit
key, the chain checkpoints, the local API key. Each is made under umask 000, the worst case: a mode
that relied on the umask would come out 0644 or 0666. (The spool and journal: tests of their own.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from service.audit_key import load_audit_key
from service.db.anchor import append_checkpoint, sign
from service.db.chain import ChainLink
from service.db.migrate import upgrade
from service.db.session import make_engine
from service.private_files import create_private_file, private_directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_sqlite_database_and_its_wal_are_0600_in_0700_directories(tmp_path, open_umask) -> None:
    database = tmp_path / "var" / "records" / "kdoct.db"
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # held open: the -wal and -shm files exist meanwhile
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
            conn.commit()
            made = [database, database.with_name("kdoct.db-wal"), database.with_name("kdoct.db-shm")]
            assert all(path.exists() for path in made)
            assert {str(path.name): oct(_mode(path)) for path in made} == {
                path.name: oct(0o600) for path in made
            }
    finally:
        engine.dispose()
    assert _mode(database.with_name("kdoct.db.migrate-lock")) == 0o600
    assert _mode(tmp_path / "var") == 0o700 and _mode(tmp_path / "var" / "records") == 0o700


def test_the_audit_key_and_the_checkpoints_are_0600_in_0700_directories(tmp_path, open_umask) -> None:
    key_file = tmp_path / "audit" / "keys" / "audit.key"
    key = load_audit_key(key_file)
    assert _mode(key_file) == 0o600
    assert _mode(key_file.parent) == 0o700 and _mode(key_file.parent.parent) == 0o700
    anchors = tmp_path / "anchors" / "chain-anchors.jsonl"
    append_checkpoint(anchors, sign(key, ChainLink(1, "a" * 64)))
    assert _mode(anchors) == 0o600 and _mode(anchors.parent) == 0o700


def test_the_local_api_key_directory_is_0700(tmp_path, open_umask, repo_root) -> None:
    key_file = tmp_path / "local" / "keys" / "api-key"
    env = {name: value for name, value in os.environ.items() if not name.startswith("KDOCT_")}
    env["KDOCT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'kdoct.db'}"
    upgrade(env["KDOCT_DATABASE_URL"])
    made = subprocess.run(
        [sys.executable, "-m", "service", "apikey", "ensure-local", "--key-file", str(key_file)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert _mode(key_file) == 0o600
    assert _mode(key_file.parent) == 0o700 and _mode(key_file.parent.parent) == 0o700


def test_existing_files_and_directories_keep_their_mode(tmp_path, open_umask) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    existing = shared / "kdoct.db"
    existing.write_bytes(b"")
    os.chmod(existing, 0o640)
    private_directory(shared / "new")
    assert create_private_file(existing) is False
    assert _mode(shared) == 0o750 and _mode(existing) == 0o640  # the operator's choice
    assert _mode(shared / "new") == 0o700
