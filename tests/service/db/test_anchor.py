"""Chain checkpoints and the audit key: a checkpoint verifies only under its key, a forged or altered
one is reported, and `verify` tells a truncated or rewritten tail from an intact chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from kdoct.errors import ConfigError
from kdoct_testing.chain import CHAIN_KEY
from service.audit_key import REQUEST_ID_HASH_PREFIX, AuditKey, load_audit_key
from service.db.anchor import ChainAnchor, append_checkpoint, read_checkpoints, sign
from service.db.audit import verify
from service.db.chain import ChainLink, append_predictions


def _remove_from(engine: Engine, sequence: int) -> None:
    """What an owner or superuser can do behind the triggers' back."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE predictions DISABLE TRIGGER USER"))
            conn.execute(text("DELETE FROM predictions WHERE sequence >= :s"), {"s": sequence})
            conn.execute(text("ALTER TABLE predictions ENABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER predictions_no_delete"))
            conn.execute(text("DELETE FROM predictions WHERE sequence >= :s"), {"s": sequence})


def test_checkpoints_verify_only_under_their_key(tmp_path: Path) -> None:
    key, other = AuditKey.generate(), AuditKey.generate()
    path = tmp_path / "anchors.jsonl"
    good = sign(key, ChainLink(7, "a" * 64))
    append_checkpoint(path, good)
    append_checkpoint(path, sign(other, ChainLink(8, "b" * 64)))
    moved = json.loads(good.to_json()) | {"sequence": 9}  # a real MAC over another position
    with path.open("a") as handle:
        handle.write(json.dumps(moved) + "\n")
        handle.write("{not json\n")
    found = read_checkpoints(path, key)
    assert found.checkpoints == [good]
    assert len(found.problems) == 3 and not found.ok
    assert "line 2: signed with another audit key" in found.problems[0]
    assert "line 3: MAC does not match" in found.problems[1]
    assert "line 4: not a checkpoint" in found.problems[2]
    assert path.stat().st_mode & 0o077 == 0


def test_verify_tells_truncated_and_rewritten_tails_from_an_intact_chain(db_url, make_rows) -> None:
    from service.db.session import make_engine

    engine = make_engine(db_url)
    key = AuditKey.generate()
    try:
        first = append_predictions(engine, make_rows(3), key=CHAIN_KEY)
        second = append_predictions(engine, make_rows(2), key=CHAIN_KEY)
        assert first.head.sequence == 3 and second.head == ChainLink(5, second.head.row_hash)
        checkpoints = [sign(key, first.head), sign(key, second.head)]
        report = verify(engine, checkpoints, key=CHAIN_KEY)
        assert report.ok and report.rows_checked == 5 and report.checkpoints_checked == 2

        _remove_from(engine, 5)
        assert verify(engine, key=CHAIN_KEY).ok  # the chain alone cannot see its end is missing
        truncated = verify(engine, checkpoints, key=CHAIN_KEY)
        assert not truncated.ok and truncated.broken.sequence == 5 and truncated.broken.prediction_id is None
        assert "truncated" in truncated.broken.reason and "chain ends at 4" in truncated.broken.reason
        assert truncated.checkpoints_checked == 1

        # The tail replaced by new rows: a valid chain again, but not the one that was checkpointed.
        append_predictions(engine, make_rows(1), key=CHAIN_KEY)
        rewritten = verify(engine, checkpoints, key=CHAIN_KEY)
        assert not rewritten.ok and rewritten.broken.sequence == 5
        assert "differs from the checkpoint" in rewritten.broken.reason
    finally:
        engine.dispose()


def test_the_anchor_checkpoints_the_newest_link_it_was_told_once(tmp_path: Path) -> None:
    key = AuditKey.generate()
    anchor = ChainAnchor(key, tmp_path / "a" / "anchors.jsonl")
    assert anchor.checkpoint() is None and not anchor.path.exists()  # nothing appended yet
    anchor.note(ChainLink(4, "d" * 64))
    anchor.note(ChainLink(2, "b" * 64))  # an older link noted late (another batch) never wins
    written = anchor.checkpoint()
    assert written.link == ChainLink(4, "d" * 64)
    assert anchor.checkpoint() is None  # unchanged head: no new line
    anchor.note(ChainLink(6, "f" * 64))
    anchor.checkpoint()
    assert [c.sequence for c in read_checkpoints(anchor.path, key).checkpoints] == [4, 6]


def test_audit_key_is_created_once_private_and_shared_by_concurrent_workers(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.key"
    script = (
        "import sys; from service.audit_key import load_audit_key; print(load_audit_key(sys.argv[1]).key_id)"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    ids = {worker.communicate(timeout=60)[0].strip() for worker in workers}
    assert len(ids) == 1 and ids == {load_audit_key(path, create=False).key_id}
    assert path.stat().st_mode & 0o077 == 0
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind

    key = load_audit_key(path)
    hashed = key.request_id_hash("MRN-0012345678")
    assert hashed.startswith(REQUEST_ID_HASH_PREFIX) and "0012345678" not in hashed
    assert hashed == load_audit_key(path).request_id_hash("MRN-0012345678")
    assert hashed != AuditKey.generate().request_id_hash("MRN-0012345678")


@pytest.mark.parametrize("content", ["", "not hex at all", "ab" * 24])
def test_a_file_without_a_key_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "audit.key"
    path.write_text(content)
    with pytest.raises(ConfigError, match="KDOCT_AUDIT_KEY_FILE"):
        load_audit_key(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_audit_key(tmp_path / "missing.key", create=False)


def test_checkpoint_lines_reach_the_log_at_every_log_level(tmp_path: Path) -> None:
    """The log's copy of each checkpoint is what survives an edited anchor file: a quiet log level
    (warning, error) must not drop it."""
    script = (
        "import sys; from pathlib import Path; from service.logs import configure_logging; "
        "from service.audit_key import AuditKey; from service.db.anchor import ChainAnchor; "
        "from service.db.chain import ChainLink; configure_logging('error'); "
        "anchor = ChainAnchor(AuditKey.generate(), Path(sys.argv[1])); "
        "anchor.note(ChainLink(3, 'c' * 64)); anchor.checkpoint()"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "anchors.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    logged = [line for line in run.stderr.splitlines() if "kdoct.anchor: chain checkpoint " in line]
    assert len(logged) == 1
    assert json.loads(logged[0].split("chain checkpoint ", 1)[1]) == json.loads(
        (tmp_path / "anchors.jsonl").read_text()
    )
