"""Chain checkpoints: links of the predictions chain, signed with the audit key and kept outside the
database, so that `audit verify` notices a chain that was cut short.

The hash chain shows a row changed, removed or reordered anywhere but at its end: a chain without its
newest rows is still a valid chain. So each service process remembers the last link it appended
itself (what it wrote, not what the database says now: a tail deleted between two checkpoints is
still caught by the next one) and, every ``interval_s`` and at shutdown, appends one line

    {"at": "2026-12-03T07:00:00.000000+00:00", "key_id": "…", "mac": "…", "row_hash": "…", "sequence": 12}

to the anchor file (under an exclusive lock, since workers share it, and fsync'd) and writes the same
line to the log (logger ``kdoct.anchor``), which a log collector carries off the host. The MAC covers
the sequence, the row hash and the time under a key derived from the audit key (service/audit_key.py),
which the database never sees: whoever can rewrite the records cannot forge a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.audit_key import AuditKey
from service.db.chain import ChainLink
from service.private_files import open_private

__all__ = [
    "DEFAULT_ANCHOR_FILE",
    "ChainAnchor",
    "Checkpoint",
    "CheckpointFile",
    "append_checkpoint",
    "read_checkpoints",
    "sign",
]

log = logging.getLogger("kdoct.anchor")

DEFAULT_ANCHOR_FILE = Path("var/chain-anchors.jsonl")
_FIELDS = ("at", "key_id", "mac", "row_hash", "sequence")


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    row_hash: str
    at: str  # UTC, ISO 8601
    key_id: str
    mac: str

    @property
    def link(self) -> ChainLink:
        return ChainLink(self.sequence, self.row_hash)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def _message(sequence: int, row_hash: str, at: str) -> bytes:
    return f"kdoct checkpoint\n{sequence}\n{row_hash}\n{at}".encode()


def sign(key: AuditKey, link: ChainLink, at: datetime | None = None) -> Checkpoint:
    moment = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    mac = key.checkpoint_mac(_message(link.sequence, link.row_hash, moment))
    return Checkpoint(link.sequence, link.row_hash, moment, key.key_id, mac)


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """One line, appended under an exclusive lock (workers share the file) and fsync'd."""
    descriptor = open_private(path, os.O_WRONLY | os.O_APPEND)  # 0600 in a 0700 directory when new
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.write(descriptor, (checkpoint.to_json() + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)  # releases the lock


@dataclass(frozen=True)
class CheckpointFile:
    checkpoints: list[Checkpoint]  # the lines whose MAC verifies under the key
    problems: list[str]  # every other line, and why

    @property
    def ok(self) -> bool:
        return not self.problems


def read_checkpoints(path: Path, key: AuditKey) -> CheckpointFile:
    """Every line of the anchor file, checked against ``key``. Raises OSError when it cannot be read."""
    checkpoints, problems = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            checkpoint = _parse(line)
            if checkpoint is None:
                problems.append(f"line {number}: not a checkpoint")
            elif checkpoint.key_id != key.key_id:
                problems.append(
                    f"line {number}: signed with another audit key (key id {checkpoint.key_id}, "
                    f"this key is {key.key_id})"
                )
            elif checkpoint.mac != key.checkpoint_mac(
                _message(checkpoint.sequence, checkpoint.row_hash, checkpoint.at)
            ):
                problems.append(f"line {number}: MAC does not match: checkpoint altered or forged")
            else:
                checkpoints.append(checkpoint)
    return CheckpointFile(checkpoints, problems)


def _parse(line: str) -> Checkpoint | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != set(_FIELDS):
        return None
    sequence = data["sequence"]
    if type(sequence) is not int or sequence < 1:
        return None
    if not all(isinstance(data[name], str) for name in ("at", "key_id", "mac", "row_hash")):
        return None
    return Checkpoint(sequence, data["row_hash"], data["at"], data["key_id"], data["mac"])


class ChainAnchor:
    """Remembers the newest link this process appended and checkpoints it on a schedule."""

    def __init__(self, key: AuditKey, path: Path, *, interval_s: float = 60.0) -> None:
        self.key = key
        self.path = Path(path)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._newest: ChainLink | None = None
        self._written: ChainLink | None = None
        self._task: asyncio.Task | None = None

    def note(self, link: ChainLink) -> None:
        """Called by the writer (any thread) after each committed append."""
        with self._lock:
            if self._newest is None or link.sequence > self._newest.sequence:
                self._newest = link

    def checkpoint(self) -> Checkpoint | None:
        """Write a checkpoint of the newest link if it is newer than the last one written."""
        with self._lock:
            newest, written = self._newest, self._written
        if newest is None or newest == written:
            return None
        checkpoint = sign(self.key, newest)
        append_checkpoint(self.path, checkpoint)
        log.info("chain checkpoint %s", checkpoint.to_json())
        with self._lock:
            self._written = newest
        return checkpoint

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kdoct-chain-anchor")

    async def stop(self) -> None:
        """Stop the schedule and checkpoint what was appended since the last one (call after the
        writer has drained)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._checkpoint_logged)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self._checkpoint_logged)

    def _checkpoint_logged(self) -> None:
        # Never let a failure end the schedule: the records are safe in the database, only the
        # protection of the chain's end waits for the next try.
        try:
            self.checkpoint()
        except OSError as exc:
            log.error("chain checkpoint could not be written to %s: %s", self.path, exc)
        except Exception:
            log.exception("chain checkpoint failed")
