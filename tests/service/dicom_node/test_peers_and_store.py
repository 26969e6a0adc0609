"""The node's allow-list and destination settings, and its durable store, on real files."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from kdoct.errors import ConfigError
from service.audit_key import AuditKey
from service.config import load_settings
from service.dicom_node.peers import parse_callers, parse_destination
from service.dicom_node.series import SeriesTracker
from service.dicom_node.store import InstanceStore

UID = "1.2.826.0.1.3680043.8.498.12345"


def test_callers_by_title_and_by_title_at_address():
    callers = parse_callers(" TESTPACS , ORTHANC@127.0.0.1,,SCANNER@10.1.2.3 ")
    assert callers.allows("TESTPACS", "192.168.0.7")
    assert callers.allows("TESTPACS  ", "192.168.0.7")  # DICOM pads AE titles with spaces
    assert callers.allows("ORTHANC", "127.0.0.1")
    assert not callers.allows("ORTHANC", "127.0.0.2")
    assert not callers.allows("testpacs", "127.0.0.1")  # AE titles are case-sensitive
    assert not callers.allows("OTHER", "127.0.0.1")
    assert not parse_callers("").allows("TESTPACS", "127.0.0.1")  # empty: nobody


@pytest.mark.parametrize("text", ["A" * 17, "BAD\\AE", "PACS@no-such-host.invalid"])
def test_bad_callers_are_named(text):
    with pytest.raises(ValueError, match="KDOCT_DICOM_CALLERS"):
        parse_callers(text)


def test_destination():
    peer = parse_destination("TESTPACS@127.0.0.1:4242")
    assert (peer.ae_title, peer.host, peer.port, str(peer)) == (
        "TESTPACS",
        "127.0.0.1",
        4242,
        "TESTPACS@127.0.0.1:4242",
    )
    for text in ("TESTPACS", "TESTPACS@host", "@host:1", "A@host:0", "A@host:x"):
        with pytest.raises(ValueError, match="KDOCT_DICOM_DESTINATION"):
            parse_destination(text)


def test_bad_dicom_settings_refuse_to_start(tmp_path):
    student = tmp_path / "student"
    with pytest.raises(ConfigError, match="KDOCT_DICOM_DESTINATION"):
        load_settings(student_bundle=student, dicom_destination="nowhere")
    with pytest.raises(ConfigError, match="KDOCT_DICOM_CALLERS"):
        load_settings(student_bundle=student, dicom_callers="WAY-TOO-LONG-AE-TITLE")


def _received(directory: Path, size: int) -> Path:
    path = directory / f"received-{size}.dcm"
    path.write_bytes(b"\0" * size)
    return path


def test_the_store_keeps_instances_durably_under_opaque_names(tmp_path):
    key = AuditKey.generate()
    store = InstanceStore(tmp_path / "store", 10_000, name=key.file_name)
    series = store.series_key(UID)
    stored = store.put(series, UID + ".1", _received(tmp_path, 3000), "TESTPACS")
    assert UID not in str(stored) and stored.exists()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    # The same instance again replaces itself; the store counts it once.
    store.put(series, UID + ".1", _received(tmp_path, 3000), "TESTPACS")
    assert store.used_bytes == 3000
    store.put(series, UID + ".2", _received(tmp_path, 8000), "TESTPACS")
    assert not store.has_room()
    # A restart finds the series, who sent it, and no half-written file.
    (stored.parent / f".{stored.name}.partial").write_bytes(b"torn")
    reopened = InstanceStore(tmp_path / "store", 10_000, name=key.file_name)
    [pending] = reopened.pending()
    assert (pending.key, pending.caller, len(pending.paths)) == (series, "TESTPACS", 2)
    assert not any(name.endswith(".partial") for name in os.listdir(stored.parent))
    reopened.remove(list(pending.paths))
    assert reopened.used_bytes == 0 and reopened.has_room()
    assert reopened.pending() == []


def test_a_series_is_due_once_idle_and_keeps_what_arrived_while_it_was_classified(tmp_path):
    tracker = SeriesTracker(idle_s=0.05)
    first, second = tmp_path / "1.dcm", tmp_path / "2.dcm"
    tracker.add("s", first, 10, "TESTPACS")
    assert tracker.due() == []  # not idle yet
    time.sleep(0.06)
    [series] = tracker.due()
    assert tracker.due() == []  # in progress: never twice
    tracker.add("s", second, 5, "TESTPACS")  # arrives while the first is classified
    assert tracker.frames("s") == 15
    assert tracker.done("s", [first]) is False
    time.sleep(0.06)
    [again] = tracker.due()
    assert list(again.paths) == [second]
    assert tracker.done("s", [second]) is True and len(tracker) == 0
