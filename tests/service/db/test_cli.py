"""`python -m service db|apikey|audit` as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from service.audit_key import load_audit_key
from service.db.anchor import ChainAnchor
from service.db.chain import append_predictions
from service.db.session import make_engine


def _service(*args: str, cwd: Path, url: str, **settings: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDOCT_DATABASE_URL": url, **settings}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_operator_workflow(pg_fresh_url: str, tmp_path: Path, repo_root: Path, make_rows) -> None:
    key_path, anchors = tmp_path / "audit.key", tmp_path / "anchors.jsonl"
    files = {"KDOCT_AUDIT_KEY_FILE": str(key_path), "KDOCT_ANCHOR_FILE": str(anchors)}
    run = lambda *args: _service(*args, cwd=repo_root, url=pg_fresh_url, **files)  # noqa: E731

    assert run("db", "upgrade").returncode == 0

    created = run("apikey", "create", "ris", "--scopes", "classify", "read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("kdoct_") and key not in created.stderr

    listing = run("apikey", "list")
    assert "ris" in listing.stdout and "classify,read" in listing.stdout and key not in listing.stdout

    assert run("apikey", "create", "ris", "--scopes", "read").returncode != 0
    assert run("apikey", "revoke", "ris").returncode == 0
    assert "revoked" in run("apikey", "list").stdout

    key_file = tmp_path / "local-key"
    first = run("apikey", "ensure-local", "--key-file", str(key_file))
    again = run("apikey", "ensure-local", "--key-file", str(key_file))
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout == key_file.read_text()
    assert key_file.stat().st_mode & 0o077 == 0

    engine = make_engine(pg_fresh_url)
    audit_key = load_audit_key(key_path)  # created here, as the service creates it on first start
    anchor = ChainAnchor(audit_key, anchors)  # what the service does on its schedule
    anchor.note(append_predictions(engine, make_rows(4), key=audit_key).head)
    anchor.checkpoint()
    intact = run("audit", "verify")
    assert intact.returncode == 0 and "ok: 4 prediction records, chain intact, 1 checkpoints" in intact.stdout

    # The newest row removed behind the triggers' back: the chain alone still verifies, its checkpoint not.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE predictions DISABLE TRIGGER USER"))
        conn.execute(text("DELETE FROM predictions WHERE sequence = 4"))
        conn.execute(text("ALTER TABLE predictions ENABLE TRIGGER USER"))
    assert run("audit", "verify", "--no-checkpoints").returncode == 0
    truncated = run("audit", "verify")
    assert (
        truncated.returncode == 1
        and "truncated" in truncated.stdout
        and "chain ends at 3" in truncated.stdout
    )

    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE predictions DISABLE TRIGGER USER"))
        conn.execute(text("UPDATE predictions SET label = 'cnv' WHERE sequence = 3"))
        conn.execute(text("ALTER TABLE predictions ENABLE TRIGGER USER"))
    engine.dispose()
    broken = run("audit", "verify", "--no-checkpoints")
    assert broken.returncode == 1 and "sequence 3" in broken.stdout

    key_path.unlink()  # verify never makes up a key: without it, it says so
    keyless = run("audit", "verify")
    assert keyless.returncode != 0 and "audit key file" in keyless.stderr and not key_path.exists()


def test_missing_schema_says_to_upgrade(tmp_path: Path, repo_root: Path) -> None:
    result = _service("apikey", "list", cwd=repo_root, url=f"sqlite:///{tmp_path / 'new.db'}")
    assert result.returncode != 0 and "db upgrade" in result.stderr
