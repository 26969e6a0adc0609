"""The DICOM node in a subprocess (`python -m service dicom-node`), and a modality that stores to it.

`running_node` starts the node on free ports and waits for its /health/ready; `c_store` sends Part 10
files over one association as a modality (or a PACS) would, with pynetdicom, and gives each file's
status, or "rejected" when the association was refused."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

from kdoct_testing.server import ServiceNotReady, free_port, log_tail, stop_service

__all__ = ["RunningNode", "c_echo", "c_store", "running_node"]


class RunningNode(NamedTuple):
    dicom_port: int
    http_url: str  # http://127.0.0.1:PORT: /metrics, /health/ready
    process: subprocess.Popen
    log_path: Path


@contextmanager
def running_node(
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    *,
    ready_timeout_s: float = 120.0,
    dicom_port: int | None = None,
) -> Iterator[RunningNode]:
    """The node started with `env` (on `dicom_port`, or a free one), ready; stopped on the way out."""
    dicom_port, http_port = dicom_port or free_port(), free_port()
    env = {**env, "KDOCT_DICOM_PORT": str(dicom_port), "KDOCT_DICOM_HTTP_PORT": str(http_port)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dicom-node"],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        began = time.monotonic()
        while True:
            if process.poll() is not None:
                raise ServiceNotReady(f"DICOM node exited with {process.returncode}:\n{log_tail(log_path)}")
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > ready_timeout_s:
                raise ServiceNotReady(
                    f"DICOM node not ready after {ready_timeout_s:.0f} s:\n{log_tail(log_path)}"
                )
            time.sleep(0.2)
        yield RunningNode(dicom_port, url, process, log_path)
    except BaseException:
        stop_service(process, 30)
        raise
    # SIGTERM drains the node: it must exit cleanly, its shutdown is part of what is tested.
    status = stop_service(process, 30)
    if status != 0:
        raise RuntimeError(f"the DICOM node exited with {status} on SIGTERM:\n{log_tail(log_path)}")


def _association(
    port: int, calling_ae: str, sop_classes: Sequence[str], syntaxes: Sequence[str], source: str = "127.0.0.1"
):
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class in sop_classes:
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title="KDOCT", bind_address=(source, 0))


def _header(data: bytes):
    import pydicom

    # The file meta and the command's UIDs only: a hostile data set is never decoded here.
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])


def c_store(port: int, files: Sequence[bytes], *, calling_ae: str = "TESTPACS") -> list[int] | str:
    """Each file's C-STORE status over one association; "rejected" when the association was refused,
    "aborted" when it ended otherwise. Each file goes as it is encoded, never decoded and re-encoded
    (pynetdicom's chunked send: a deflate bomb stays a few kilobytes on the wire)."""
    from pynetdicom import _config

    metas = [_header(data).file_meta for data in files]
    sop_classes = sorted({str(meta.MediaStorageSOPClassUID) for meta in metas})
    syntaxes = sorted({str(meta.TransferSyntaxUID) for meta in metas})
    assoc = _association(port, calling_ae, sop_classes, syntaxes)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "aborted"
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        statuses = []
        with tempfile.TemporaryDirectory() as directory:
            for index, data in enumerate(files):
                path = Path(directory) / f"{index}.dcm"
                path.write_bytes(data)
                status = assoc.send_c_store(path)
                statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()


def c_echo(port: int, *, calling_ae: str = "TESTPACS", source: str = "127.0.0.1") -> int | str:
    """The C-ECHO status; "rejected" or "aborted" when no association was made. `source`: the local
    address to call from (any of 127.0.0.0/8)."""
    assoc = _association(port, calling_ae, ["1.2.840.10008.1.1"], ["1.2.840.10008.1.2"], source)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "aborted"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
