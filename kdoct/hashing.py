"""The sha256 of a file, read in 1 MiB chunks: what bundle.json pins every bundle file by (kdoct.bundle)
and what packaged ImageNet weights are checked against (kdoct.packaged_weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
