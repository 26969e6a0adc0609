"""A real Orthanc PACS for the tests (Debian's /usr/sbin/Orthanc with its DICOMweb plugin).

`running_orthanc(workdir)` writes a JSON configuration with free ports, storage and index inside
`workdir`, starts Orthanc with its log in `workdir/orthanc.log` and waits until GET /system answers.
The object it yields can be stopped and started again on the same storage and ports (outage tests),
and has the few helpers the tests need: QIDO-RS search, REST store, C-STORE to a configured modality.
Loopback only, no authentication: a test fixture, never a deployment.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from kdoct_testing.server import free_port

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC", "Orthanc", "running_orthanc"]

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
# QIDO-RS attribute tags (DICOM JSON model keys).
_SOP_CLASS_UID = "00080016"
_SOP_INSTANCE_UID = "00080018"


class Orthanc:
    """One Orthanc process on fixed ports and a fixed storage directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str,
        modalities: Mapping[str, tuple[str, str, int]],
        lua_scripts: Sequence[Path] = (),
        http_port: int | None = None,
        dicom_port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = self.url + "/dicom-web"
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._process: subprocess.Popen | None = None
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "kdoct-test-pacs",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "DicomModalities": {name: list(peer) for name, peer in modalities.items()},
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": False,
            "DicomCheckCalledAet": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "LimitJobs": 10,
            "HttpThreadsCount": 10,
            "DicomThreadsCount": 4,
            "HttpTimeout": 10,
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "SaveJobs": False,
            "StorageCompression": False,
            "MaximumStorageSize": 0,
            "StorageAccessOnFind": "Never",
            "LoadPrivateDictionary": False,
            "UnknownSopClassAccepted": True,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "HttpDescribeErrors": True,
            # Routing rules (docs/INTEGRATION.md: deploy/orthanc/forward-opt.lua forwards OPT series).
            "LuaScripts": [str(Path(script).resolve()) for script in lua_scripts],
        }
        self.config_path.write_text(json.dumps(config, indent=2))

    # -- life ------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart, on the same storage and ports) and wait until the REST API answers."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [ORTHANC, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._process.returncode}: see {self.log_path}")
            try:
                self._request("GET", "/system", timeout=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S} s: see {self.log_path}")

    def stop(self) -> None:
        """Stop the process (its ports then refuse connections); storage stays for start()."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    # -- helpers ---------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None = None, *, content_type: str | None = None,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> bytes:  # fmt: skip
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self._request("GET", path) or b"null")

    def instances_in_study(self, study_uid: str) -> list[tuple[str, str]]:
        """(SOPClassUID, SOPInstanceUID) of every instance of the study, by QIDO-RS."""
        raw = self._request("GET", f"/dicom-web/studies/{study_uid}/instances")
        found = json.loads(raw) if raw.strip() else []
        return sorted(
            (item[_SOP_CLASS_UID]["Value"][0], item[_SOP_INSTANCE_UID]["Value"][0]) for item in found
        )

    def instance_count(self) -> int:
        return len(self.get_json("/instances"))

    def store(self, data: bytes | str | Path) -> str:
        """POST /instances (REST): the Orthanc ID of the stored instance."""
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        answer = json.loads(self._request("POST", "/instances", data, content_type="application/dicom"))
        return answer["ID"]

    def send_to_modality(self, name: str, orthanc_ids: list[str]) -> dict:
        """C-STORE the given resources to the configured modality `name` (synchronously)."""
        body = json.dumps({"Resources": list(orthanc_ids), "Synchronous": True}).encode()
        return json.loads(
            self._request("POST", f"/modalities/{name}/store", body, content_type="application/json")
        )


@contextmanager
def running_orthanc(
    workdir: str | Path,
    *,
    aet: str = "TESTPACS",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    lua_scripts: Sequence[Path] = (),
    http_port: int | None = None,
    dicom_port: int | None = None,
) -> Iterator[Orthanc]:
    """A started Orthanc storing into `workdir`, stopped on exit. `modalities`: name -> (AE, host, port);
    `lua_scripts`: Orthanc's LuaScripts (routing rules); ports: free ones unless given."""
    orthanc = Orthanc(
        Path(workdir), aet=aet, modalities=dict(modalities or {}), lua_scripts=lua_scripts,
        http_port=http_port, dicom_port=dicom_port,
    )  # fmt: skip
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()
