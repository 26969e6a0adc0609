"""Files and directories the service creates are its owner's alone: mode 0600 and 0700, whatever the
umask. They hold records (the SQLite database), secrets (the audit key, the local API key) and the
chain's checkpoints; a umask of 022, the usual default, made the database 0644 (issue 23, case 14).

A mode passed to mkdir or open is masked by the umask (it can only lose bits, so 0600 stays 0600 or
less), and pathlib's mkdir(parents=True) ignores the mode for the parents it makes: each directory
is made here one level at a time and chmod'ed after. Files and directories that exist already are
left as they are: their mode is the operator's choice (a volume shared with a backup agent).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIRECTORY_MODE", "FILE_MODE", "create_private_file", "open_private", "private_directory"]

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: Path) -> None:
    """``mkdir -p path``, each directory it makes 0700."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIRECTORY_MODE)
        except FileExistsError:
            continue  # another worker made it meanwhile
        os.chmod(directory, DIRECTORY_MODE)


def create_private_file(path: Path) -> bool:
    """Make ``path`` (and its directories) empty with mode 0600 unless it exists; whether it made it."""
    private_directory(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    return True


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags)`` of a file made first, when missing, 0600 (its directories 0700): a
    descriptor, for appends and locks."""
    create_private_file(path)
    return os.open(path, flags)
