"""Two processes sharing a spool during an outage (issue 23, case 9): a real Journal writer process
appends rows one at a time, each acknowledged once fsync'd, its segments let go for replay as a writer
whose database is down lets them go; a real claimer process loops Spool.claim_one, inserts what it
claimed into PostgreSQL and removes the file. Before, a segment was visible under the replay glob before
its writer locked it: the claimer locked it first, found it empty, unlinked it, and the writer then
appended acknowledged rows to the unlinked file (8 of 5,000 lost). Now a segment gets its name only
once its writer holds it, and a claimer checks that the name still names what it read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from kdoct_testing.chain import CHAIN_KEY
from kdoct_testing.records import stored_rows
from service.db.chain import append_predictions
from service.db.session import make_engine
from service.db.spool import Spool

REPO = Path(__file__).resolve().parents[3]
ROWS = 5_000
# Two workers replaying the same spool: twice the chances to meet a segment in the moment it appears.
CLAIMERS = 2

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
    from conftest import make_record
    from service.db.journal import Journal
    from service.db.rows import normalise_row

    # One row per segment: every append starts a segment, the moment the race was about.
    journal = Journal({spool!r}, segment_bytes=1)
    with open({acks!r}, "w") as acks:
        for _ in range({rows}):
            row = normalise_row(make_record())
            segment = journal.append([row])  # fsync'd: from here the row is acknowledged
            acks.write(str(row["id"]) + "\\n")
            acks.flush()
            journal.leave_for_replay(segment, 1)  # the database is down: the segment goes to replay
            while len(os.listdir({spool!r})) > 20:  # the claimer keeps up: it meets each new segment
                time.sleep(0.0005)
    journal.close()
    """
)

_CLAIMER = textwrap.dedent(
    """
    import os, sys
    from contextlib import ExitStack
    sys.path.insert(0, {repo!r})
    from kdoct_testing.chain import CHAIN_KEY
    from service.db.chain import append_predictions
    from service.db.session import make_engine
    from service.db.spool import Spool

    engine = make_engine({url!r})
    spool = Spool({spool!r})
    claims = 0
    while True:
        # Up to 50 files claimed (each locked) at a time, their rows inserted in one transaction, then
        # removed: a claimer as fast as the writer, so it meets each new segment as it appears.
        with ExitStack() as stack:
            claimed = []
            while len(claimed) < 50:
                file = stack.enter_context(spool.claim_one())
                if file is None:
                    break
                claimed.append(file)
            rows = [row for file in claimed for row in file.rows]
            if rows:
                append_predictions(engine, rows, key=CHAIN_KEY)
            for file in claimed:
                file.remove()
            claims += len(claimed)
        if not claimed and os.path.exists({writer_done!r}) and not spool.has_files():
            break
    print(claims)
    """
)


def _spool_dir(tmp_path: Path) -> Path:
    """On tmpfs where there is one: the race is about when a file is visible and locked, not about
    fsync, and 5,000 segments fsync'd twice each take minutes on a shared disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 256 << 20:
        return Path(tempfile.mkdtemp(prefix="kdoct-race-", dir=shm))
    return tmp_path / "spool"


def test_no_acknowledged_row_is_lost_to_a_claimer_racing_the_journal(pg_url: str, tmp_path: Path) -> None:
    spool_dir = _spool_dir(tmp_path)
    acks, writer_done = tmp_path / "acks.txt", tmp_path / "writer-done"
    try:
        _race(spool_dir, acks, writer_done, pg_url)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


def _race(spool_dir: Path, acks: Path, writer_done: Path, pg_url: str) -> None:
    settings = dict(
        repo=str(REPO), tests=str(Path(__file__).parent), spool=str(spool_dir), url=pg_url, rows=ROWS,
        acks=str(acks), writer_done=str(writer_done),
    )  # fmt: skip
    spool_dir.mkdir(exist_ok=True)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER.format(**settings)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(CLAIMERS)
    ]
    try:
        subprocess.run([sys.executable, "-c", _WRITER.format(**settings)], cwd=REPO, check=True, timeout=120)
        writer_done.touch()
        claims = [int(claimer.communicate(timeout=120)[0]) for claimer in claimers]
    finally:
        for claimer in claimers:
            claimer.kill()
    assert [claimer.returncode for claimer in claimers] == [0] * CLAIMERS
    # The claimers did race the writer: its segments were claimed one by one as they came.
    assert sum(claims) > ROWS // 2

    acknowledged = acks.read_text().split()
    assert len(acknowledged) == ROWS
    # Whatever is still on disk is replayed now (there should be nothing left).
    engine = make_engine(pg_url)
    spool = Spool(spool_dir)
    while True:
        with spool.claim_one() as claimed:
            if claimed is None:
                break
            append_predictions(engine, claimed.rows, key=CHAIN_KEY)
            claimed.remove()
    lost = set(acknowledged) - set(stored_rows(engine))
    engine.dispose()
    assert not lost, f"{len(lost)} of {ROWS} acknowledged rows lost"
