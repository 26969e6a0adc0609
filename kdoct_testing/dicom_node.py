"""The DICOM node in a subprocess (`python -m service dicom-node`), and a modality that stores to it.

`running_node` starts the node on free ports and waits for its /health/ready; `c_store` sends Part 10
files over one association as a modality (or a PACS) would, with pynetdicom, and gives each file's
status, or "rejected" when the association was refused."""

from __future__ import annotations

import io
import subprocess
import sys
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
    env: dict[str, str], cwd: Path, log_path: Path, *, ready_timeout_s: float = 120.0
) -> Iterator[RunningNode]:
    dicom_port, http_port = free_port(), free_port()
    env = {**env, "KDOCT_DICOM_PORT": str(dicom_port), "KDOCT_DICOM_HTTP_PORT": str(http_port)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "dicom-node"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
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
                raise ServiceNotReady(f"DICOM node not ready after {ready_timeout_s:.0f} s:\n{log_tail(log_path)}")
            time.sleep(0.2)
        yield RunningNode(dicom_port, url, process, log_path)
    finally:
        stop_service(process, 30)


def _association(port: int, calling_ae: str, sop_classes: Sequence[str], syntaxes: Sequence[str]):
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class in sop_classes:
        for syntax in syntaxes:
            ae.add_requested_context(sop_class, syntax)
    return ae.associate("127.0.0.1", port, ae_title="KDOCT")


def c_store(port: int, files: Sequence[bytes], *, calling_ae: str = "TESTPACS") -> list[int] | str:
    """Each file's C-STORE status over one association; "rejected" when the association was refused,
    "aborted" when it was aborted. Each file goes in its own transfer syntax."""
    import pydicom

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
    sop_classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    assoc = _association(port, calling_ae, sop_classes, syntaxes)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "aborted"
    try:
        statuses = []
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


def c_echo(port: int, *, calling_ae: str = "TESTPACS") -> int | str:
    assoc = _association(port, calling_ae, ["1.2.840.10008.1.1"], ["1.2.840.10008.1.2"])
    if assoc.is_rejected:
        return "rejected"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
