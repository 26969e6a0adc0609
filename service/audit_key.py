"""The audit key: a secret kept in a file beside the service, never in the database.

It does two things the database alone cannot:
- it keys the hash under which a client's X-Request-ID is stored, so a client that puts a medical
  record number in that header leaves no MRN (and no unkeyed hash of one, which a list of MRNs
  would reverse) in the records;
- it keys the links of the predictions hash chain (service/db/chain.py, from revision 0006 on), so
  that someone who may INSERT into the database (the service's runtime role), but not read this file,
  cannot append a row that `audit verify` accepts;
- it signs the chain checkpoints (service/db/anchor.py), so that someone who can rewrite the
  database, but not read this file, cannot forge a checkpoint for a truncated chain.

Each purpose uses its own key derived from the secret (HMAC-SHA256 of a fixed label), so a value
computed for one can never be passed off as the other. The file holds at least 32 random bytes as
hex; the service creates one (mode 0600) on first start when it is missing. Every replica that
shares a database must share the file, or request-id lookups, chain links and checkpoints will not
match; and the file must be kept for as long as the records are: without it no keyed link can be
verified.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from pathlib import Path

from kdoct.errors import ConfigError
from service.private_files import private_directory

__all__ = [
    "AUDIT_KEY_BYTES",
    "DEFAULT_AUDIT_KEY_FILE",
    "REQUEST_ID_HASH_PREFIX",
    "AuditKey",
    "load_audit_key",
]

log = logging.getLogger(__name__)

AUDIT_KEY_BYTES = 32
DEFAULT_AUDIT_KEY_FILE = Path("var/audit.key")
# Stored request ids carry their scheme, so they are never mistaken for a value a client sent.
REQUEST_ID_HASH_PREFIX = "hmac-sha256:"


class AuditKey:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < AUDIT_KEY_BYTES:
            raise ValueError(f"an audit key needs at least {AUDIT_KEY_BYTES} bytes, got {len(secret)}")
        self._request_id_key = _derive(secret, b"kdoct request-id v1")
        self._checkpoint_key = _derive(secret, b"kdoct chain checkpoint v1")
        self._chain_link_key = _derive(secret, b"kdoct chain link v1")
        self._file_name_key = _derive(secret, b"kdoct file name v1")
        # Names the key in checkpoints without revealing it: tells "another key" from "forged".
        self.key_id = hashlib.sha256(b"kdoct key id\n" + secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> AuditKey:
        return cls(secrets.token_bytes(AUDIT_KEY_BYTES))

    def request_id_hash(self, request_id: str) -> str:
        digest = hmac.new(self._request_id_key, request_id.encode(), hashlib.sha256).hexdigest()
        return REQUEST_ID_HASH_PREFIX + digest

    def file_name(self, value: str) -> str:
        """A stable file name for `value` (a DICOM UID) that does not reveal it (the DICOM node's store)."""
        return hmac.new(self._file_name_key, value.encode(), hashlib.sha256).hexdigest()[:32]

    def checkpoint_mac(self, message: bytes) -> str:
        return hmac.new(self._checkpoint_key, message, hashlib.sha256).hexdigest()

    def chain_link_mac(self, message: bytes) -> str:
        return hmac.new(self._chain_link_key, message, hashlib.sha256).hexdigest()


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def load_audit_key(path: Path, *, create: bool = True) -> AuditKey:
    """The key in ``path``; with ``create``, a new random one is written there first when the file
    does not exist (atomically: concurrent workers end up with the same key). Raises ConfigError for
    a file that is unreadable or does not hold a key."""
    path = Path(path)
    if create and not path.exists():
        _create(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"audit key file {path} does not exist (KDOCT_AUDIT_KEY_FILE)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"audit key file {path} cannot be read: {exc} (KDOCT_AUDIT_KEY_FILE)") from None
    try:
        return AuditKey(bytes.fromhex(text))
    except ValueError:
        raise ConfigError(
            f"audit key file {path} must hold at least {AUDIT_KEY_BYTES} bytes as hex "
            f"(e.g. `openssl rand -hex {AUDIT_KEY_BYTES}`) (KDOCT_AUDIT_KEY_FILE)"
        ) from None


def _create(path: Path) -> None:
    private_directory(path.parent)
    # A random name, not the pid: replicas in containers sharing the volume can have the same pids.
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(AUDIT_KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if another worker got there first: theirs is kept
        except FileExistsError:
            return
        log.warning(
            "created a new audit key in %s: keep a copy away from this host and from the database; "
            "`python -m service audit verify` needs it to check the chain's links and checkpoints",
            path,
        )
    finally:
        temporary.unlink(missing_ok=True)
