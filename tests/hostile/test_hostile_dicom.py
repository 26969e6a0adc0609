"""The DICOM door has the locks of every other (kdoct_testing/ingress.py DicomDoor): a real node
process (`python -m service dicom-node`) on tiny real bundles, instances sent by C-STORE as a modality
sends them. Callers off the list are refused at association; bombs, excess frames and instances over
the memory budget get a failure status before anything is stored, and the node stays within a wide
memory bound and keeps answering."""

from __future__ import annotations

import io
import socket
import struct
import time

import httpx
import numpy as np
import pytest
from corpus import deflated_dicom

from kdoct_testing.dicom_node import c_echo
from kdoct_testing.ingress import DicomDoor
from kdoct_testing.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from kdoct_testing.uploads import jpeg_gray, make_dicom

RSS_GROWTH_LIMIT = 300 << 20
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _metric(dicom_node, name: str, **labels: str) -> float:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in httpx.get(f"{dicom_node.http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not in the node's metrics")


def _grows_rss_by(dicom_node, action):
    baseline = rss_bytes(dicom_node.process.pid)
    reset_peak_rss(dicom_node.process.pid)
    result = action()
    return peak_rss_bytes(dicom_node.process.pid) - baseline, result


@pytest.fixture(scope="module")
def bscan(sample_jpegs) -> np.ndarray:
    return jpeg_gray(sample_jpegs["NORMAL"][0])


def test_callers_off_the_list_are_refused_at_association(dicom_node, bscan):
    door = DicomDoor()
    volume = make_dicom([bscan])
    assert door.send(dicom_node.dicom_port, [volume], "INTRUDER")[0] == 403
    assert door.send(dicom_node.dicom_port, [volume], "FARAWAY")[0] == 403  # the right title, another host
    assert c_echo(dicom_node.dicom_port, calling_ae="INTRUDER") == "rejected"
    assert c_echo(dicom_node.dicom_port, calling_ae="OTHER") == 0x0000
    assert _metric(dicom_node, "kdoct_dicom_associations_total", outcome="rejected_caller") >= 3


@pytest.mark.parametrize(
    "name, build",
    [
        # 1 GiB of zeros in a private element before the pixel data: the header probe stops it.
        ("header-bomb", lambda: deflated_dicom(np.zeros((2, 64, 64), np.uint8), private_zeros=1 << 30)),
        # 512 MiB of zeros after the pixel data: the probe never reaches them; the store's inflate does.
        ("trailing-bomb", lambda: deflated_dicom(np.zeros((2, 64, 64), np.uint8), trailing_zeros=512 << 20)),
    ],
)
def test_a_deflate_bomb_gets_a_failure_status_within_seconds_and_bounded_memory(dicom_node, name, build):
    bomb = build()
    assert len(bomb) < 4 << 20
    began = time.monotonic()
    growth, (status, body) = _grows_rss_by(
        dicom_node, lambda: DicomDoor().send(dicom_node.dicom_port, [bomb], "TESTPACS")
    )
    assert status in (413, 422), (name, status, body)
    assert time.monotonic() - began < 60
    assert growth < RSS_GROWTH_LIMIT, f"{name}: RSS grew {growth >> 20} MiB"
    assert c_echo(dicom_node.dicom_port) == 0x0000


def _stream_association_request(port: int, announced: int, limit: int) -> int:
    """Announce an A-ASSOCIATE-RQ of `announced` bytes, then send zeros until the node closes the
    connection or `limit` bytes went out; the bytes sent."""
    sent = 0
    chunk = bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, announced))
        try:
            while sent < limit:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # reset or broken pipe: the node closed it
            pass
    return sent


def test_an_oversized_association_request_is_cut_off_before_the_caller_is_known(dicom_node):
    """pynetdicom reads a PDU into memory up to its declared length (4 GiB at most), the association
    request too, before anyone knows who calls. A peer announcing 2 GiB and streaming is closed after
    the header: a few MiB (socket buffers) go out of 512, and the node's memory does not follow."""
    growth, sent = _grows_rss_by(
        dicom_node, lambda: _stream_association_request(dicom_node.dicom_port, (2 << 30) - 1, 512 << 20)
    )
    assert sent < 64 << 20, f"{sent >> 20} MiB went out before the node closed the connection"
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth >> 20} MiB"
    assert _metric(dicom_node, "kdoct_dicom_associations_total", outcome="oversized_pdu") >= 1
    assert c_echo(dicom_node.dicom_port) == 0x0000


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def test_one_peer_cannot_hold_every_connection(dicom_node):
    """Each connection costs a thread before its association is examined: one address may hold
    KDOCT_DICOM_MAX_ASSOCIATIONS (8) open connections, the next are closed as they arrive, and a caller
    from another address is answered meanwhile."""
    flood = []
    for _ in range(40):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", dicom_node.dicom_port))
        flood.append(sock)
    try:
        held = [sock for sock in flood if not _closed_by_peer(sock, 0.5)]
        assert len(held) == 8
        assert c_echo(dicom_node.dicom_port, source="127.0.0.1") == 0x0000
    finally:
        for sock in flood:
            sock.close()


def test_an_instance_over_the_frame_limit_is_refused(dicom_node):
    excess = make_dicom([np.zeros((32, 32), np.uint8)] * 300)  # KDOCT_MAX_FRAMES is 256
    growth, (status, _) = _grows_rss_by(
        dicom_node, lambda: DicomDoor().send(dicom_node.dicom_port, [excess], "TESTPACS")
    )
    assert status == 413
    assert growth < RSS_GROWTH_LIMIT


def test_frames_are_counted_across_the_instances_of_a_series(dicom_node):
    """A series is one request: two instances of 200 frames each exceed the 256 frames of one."""
    series = "1.2.826.0.1.3680043.8.498.1" + str(time.time_ns())[-12:]
    study = series + ".1"
    first, second = (
        make_dicom([np.zeros((32, 32), np.uint8)] * 200, study_uid=study, series_uid=series) for _ in range(2)
    )
    status, body = DicomDoor().send(dicom_node.dicom_port, [first, second], "TESTPACS")
    assert body == b"[200, 413]", body


def test_an_instance_over_the_memory_budget_is_refused_before_it_is_stored(dicom_node, bscan):
    """200 frames of 496x512 would hold ~200 MiB decoded: over the 96 MiB budget, whatever the load."""
    big = make_dicom([bscan] * 200)
    stored_before = _metric(dicom_node, "kdoct_dicom_instances_total", outcome="stored")
    growth, (status, _) = _grows_rss_by(
        dicom_node, lambda: DicomDoor().send(dicom_node.dicom_port, [big], "TESTPACS")
    )
    assert status == 413
    assert growth < RSS_GROWTH_LIMIT
    assert _metric(dicom_node, "kdoct_dicom_instances_total", outcome="stored") == stored_before


def test_reports_sent_back_are_accepted_and_never_classified(dicom_node):
    """A PACS that routes the node's own SR back to it gets success, and no loop starts."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SR_CLASS, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID, report.SOPInstanceUID = SR_CLASS, meta.MediaStorageSOPInstanceUID
    report.Modality = "SR"
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    ignored = _metric(dicom_node, "kdoct_dicom_instances_total", outcome="ignored")
    assert DicomDoor().send(dicom_node.dicom_port, [buffer.getvalue()], "TESTPACS")[0] == 200
    assert _metric(dicom_node, "kdoct_dicom_instances_total", outcome="ignored") == ignored + 1


def _wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(0.2)


def test_a_valid_volume_is_stored_then_classified_once(dicom_node, sample_jpegs):
    """JPEG 2000, as Zeiss and Heidelberg export. Other tests' series are done with first."""
    _wait_for(lambda: _metric(dicom_node, "kdoct_dicom_store_bytes") == 0, "the store emptied")
    frames = [jpeg_gray(path) for path in sample_jpegs["CNV"][:3]]
    classified = _metric(dicom_node, "kdoct_dicom_series_total", outcome="classified")
    assert DicomDoor().send(dicom_node.dicom_port, [make_dicom(frames, jpeg2000=True)], "OTHER")[0] == 200
    assert _metric(dicom_node, "kdoct_dicom_store_bytes") > 0  # stored (fsync'd) before it was answered
    _wait_for(
        lambda: _metric(dicom_node, "kdoct_dicom_store_bytes") == 0, "the series classified and removed"
    )
    time.sleep(1.0)  # idle twice over: nothing of it is classified again
    assert _metric(dicom_node, "kdoct_dicom_series_total", outcome="classified") == classified + 1
