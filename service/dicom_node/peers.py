"""Who may call the node, and where its results go: KDOCT_DICOM_CALLERS and KDOCT_DICOM_DESTINATION.

Callers: `AE` (that AE title from any address) or `AE@host` (only from that address; a host name is
resolved once, at start), comma-separated. AE titles are compared exactly, after trimming the spaces
DICOM pads them with. Destination: `AE@host:port`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

__all__ = ["Caller", "Callers", "Peer", "parse_ae_title", "parse_callers", "parse_destination"]


def parse_ae_title(text: str, what: str) -> str:
    title = text.strip()
    if not 1 <= len(title) <= 16 or not title.isascii() or "\\" in title or not title.isprintable():
        raise ValueError(f"{what}: '{text}' is not an AE title (1 to 16 printable ASCII characters, no '\\')")
    return title


def _address(host: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise ValueError(f"{what}: host '{host}' does not resolve") from None


@dataclass(frozen=True)
class Caller:
    ae_title: str
    address: str | None  # None: from any address


@dataclass(frozen=True)
class Callers:
    entries: tuple[Caller, ...]

    def allows(self, ae_title: str, address: str) -> bool:
        title = ae_title.strip()
        return any(
            entry.ae_title == title and (entry.address is None or entry.address == address)
            for entry in self.entries
        )

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(sorted({entry.ae_title for entry in self.entries}))


def parse_callers(text: str) -> Callers:
    """KDOCT_DICOM_CALLERS; ValueError naming the bad entry."""
    entries = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        title, _, host = item.partition("@")
        what = "KDOCT_DICOM_CALLERS"
        address = _address(host.strip(), what) if host.strip() else None
        entries.append(Caller(parse_ae_title(title, what), address))
    return Callers(tuple(entries))


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Peer:
    """KDOCT_DICOM_DESTINATION (`AE@host:port`); ValueError naming what is wrong."""
    what = "KDOCT_DICOM_DESTINATION"
    title, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: '{text}' is not AE@host:port")
    return Peer(parse_ae_title(title, what), host.strip("[]"), int(port))
