"""How the spool's files are made, written and told apart; shared by the spool (service/db/spool.py), the
journal (service/db/journal.py), the backlog count and the quarantine.

A spool file becomes visible to replay (its name matches SPOOL_GLOB) only once its creator holds its
flock: it is created under a name the glob does not match (``.open-...``), locked, fsync'd, and only
then renamed. A claimer that gets the lock of a file under the glob therefore knows its writer has let
go of it (closed, or died), and reads it complete. Before that rule a claimer could lock and unlink
a file created a moment earlier but not yet locked, and its writer then appended acknowledged rows to
the unlinked inode (issue 23, case 9).

Files are created 0600 and directories 0700: the spool holds prediction records.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

__all__ = [
    "OPENING_PREFIX",
    "SPOOL_GLOB",
    "create_locked",
    "ensure_dir",
    "fsync_dir",
    "held_by_another",
    "same_file",
    "spool_names",
    "sweep_openings",
    "write_all",
]

SPOOL_GLOB = "spool-*.jsonl"
OPENING_PREFIX = ".open-"  # a file being created: replay never sees it
FILE_MODE = 0o600
DIR_MODE = 0o700
# A file still under its opening name after this long was left by a process that died while creating
# it (no row is ever written before the rename): it may go.
_STALE_OPENING_S = 60.0


def spool_names(directory: Path) -> list[str]:
    """The names in `directory` that match SPOOL_GLOB, sorted; [] when there is no such directory.
    os.scandir and plain strings: pathlib's glob and Path comparisons cost 20 ms per call with 2,000
    files, and replay lists the directory once per file it claims."""
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith("spool-") and e.name.endswith(".jsonl")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


def ensure_dir(directory: Path) -> None:
    """The directory, created 0700 if missing (an existing one keeps the mode its operator gave it)."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def create_locked(directory: Path) -> tuple[int, Path]:
    """A new, empty spool file in `directory`, open for appending and flocked by this process, under
    its final name: (file descriptor, path). The name is durable (the directory is fsync'd)."""
    ensure_dir(directory)
    name = f"spool-{os.getpid()}-{uuid.uuid4().hex}.jsonl"
    opening = directory / f"{OPENING_PREFIX}{name}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(opening, flags, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can know this name yet: never waits
        os.fsync(fd)
        path = directory / name
        os.rename(opening, path)
        fsync_dir(directory)  # the new name must survive a crash too
    except BaseException:
        os.close(fd)
        opening.unlink(missing_ok=True)
        raise
    return fd, path


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a regular file may take fewer bytes than offered)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def held_by_another(fd: int) -> bool:
    """Whether another open file (a live writer, or a claimer) holds the file's flock. When not, this
    descriptor now holds it: it goes when the descriptor is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (not removed, not replaced, since it was opened)."""
    opened = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def sweep_openings(directory: Path) -> None:
    """Remove files left under their opening name by processes that died while creating them: they
    are empty (rows are appended only after the rename) and unlocked."""
    if not directory.is_dir():
        return
    now = time.time()
    for path in directory.glob(f"{OPENING_PREFIX}spool-*.jsonl"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            stale = now - os.fstat(fd).st_mtime > _STALE_OPENING_S
            if stale and not held_by_another(fd) and same_file(fd, path):
                path.unlink(missing_ok=True)
        except OSError:
            continue
        finally:
            os.close(fd)
