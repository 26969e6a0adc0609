"""The node's association rules on a real pynetdicom server in this process (no models): who is
rejected, when the store is full, and that an accepted C-STORE reaches `admit` with its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from kdoct_testing.dicom_node import c_echo, c_store
from kdoct_testing.server import free_port
from kdoct_testing.uploads import make_dicom
from service.dicom_node.peers import parse_callers
from service.dicom_node.scp import StorageSCP, StoreOutcome


def _associations(outcome: str) -> float:
    return REGISTRY.get_sample_value("kdoct_dicom_associations_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def scp_factory():
    started = []

    def start(*, has_room=lambda: True, admit=None) -> int:
        port = free_port()
        scp = StorageSCP(
            ae_title="KDOCT",
            callers=parse_callers("TESTPACS"),
            admit=admit or (lambda path, caller, instance: StoreOutcome("success")),
            has_room=has_room,
            max_associations=2,
        )
        scp.start("127.0.0.1", port)
        started.append(scp)
        return port

    yield start
    for scp in started:
        scp.stop()


def test_a_full_store_rejects_associations_transiently(scp_factory):
    port = scp_factory(has_room=lambda: False)
    before = _associations("store_full")
    assert c_echo(port) == "rejected"
    assert _associations("store_full") == before + 1


def test_an_accepted_instance_reaches_admit_as_a_file_and_its_status_goes_back(scp_factory):
    seen: list[tuple[bytes, str, str]] = []

    def admit(path: Path, caller: str, instance: str) -> StoreOutcome:
        seen.append((path.read_bytes()[128:132], caller, instance))
        return StoreOutcome("too_large", "the series would hold 300 frames")

    port = scp_factory(admit=admit)
    assert c_store(port, [make_dicom([np.zeros((8, 8), np.uint8)])]) == [0xA710]
    [(magic, caller, instance)] = seen
    assert magic == b"DICM" and caller == "TESTPACS" and instance.startswith("1.")
    assert c_echo(port, calling_ae="STRANGER") == "rejected"
