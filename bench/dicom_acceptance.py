"""`python -m bench.dicom_acceptance`: issue 25's acceptance, against `make run` as a user runs it.

Start the service first, with the node's caller and destination pointing at the Orthanc this starts:

    KDOCT_DICOM_CALLERS=TESTPACS KDOCT_DICOM_DESTINATION=TESTPACS@127.0.0.1:4242 \\
        KDOCT_DICOMWEB_URL=http://127.0.0.1:8042/dicom-web make run

Then this starts a real Orthanc (AE TESTPACS, DICOM 4242, HTTP 8042) with the forwarding rule of
docs/INTEGRATION.md (deploy/orthanc/forward-opt.lua, modality kdoct = KDOCT@127.0.0.1:11112), stores with
dcmtk's storescu a multi-frame OPT of real CNV B-scans from the default model's held-out test split, and
checks that the study in Orthanc gets an SR referencing the source SOP instance and an Encapsulated PDF,
that the records (var/kdoct.db) hold the prediction with label cnv, and that a caller not on the list is
rejected (echoscu). It prints what it found and exits 1 when a check fails.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from bench.bundles import REPO_ROOT
from kdoct_testing.orthanc import running_orthanc
from kdoct_testing.uploads import jpeg_gray, make_dicom

SR_CLASS, PDF_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.104.1"
FRAMES = 5


def _test_cnv_scans() -> list:
    rows = csv.DictReader((REPO_ROOT / "var" / "default-model" / "split.csv").open())
    paths = [Path(row["path"]) for row in rows if row["role"] == "test" and row["label"] == "cnv"]
    scans = [jpeg_gray(path) for path in paths]
    shape = max({scan.shape for scan in scans}, key=lambda s: sum(scan.shape == s for scan in scans))
    return [scan for scan in scans if scan.shape == shape][:FRAMES]


def main() -> int:
    checks: dict[str, bool] = {}
    volume = make_dicom(_test_cnv_scans())
    source = pydicom.dcmread(io.BytesIO(volume), stop_before_pixels=True)
    with tempfile.TemporaryDirectory() as work, running_orthanc(
        Path(work) / "orthanc", aet="TESTPACS", http_port=8042, dicom_port=4242,
        modalities={"kdoct": ("KDOCT", "127.0.0.1", 11112)},
        lua_scripts=[REPO_ROOT / "deploy" / "orthanc" / "forward-opt.lua"],
    ) as orthanc:  # fmt: skip
        path = Path(work) / "volume.dcm"
        path.write_bytes(volume)
        began = time.monotonic()
        stored = subprocess.run(
            ["storescu", "-aet", "OCTDEVICE", "-aec", "TESTPACS", "127.0.0.1", "4242", str(path)]
        )
        checks["storescu stored the OPT to Orthanc"] = stored.returncode == 0
        found: dict[str, list[str]] = {}
        while time.monotonic() - began < 120 and not (SR_CLASS in found and PDF_CLASS in found):
            time.sleep(0.5)
            found = {}
            for sop_class, instance in orthanc.instances_in_study(source.StudyInstanceUID):
                found.setdefault(sop_class, []).append(instance)
        seconds = time.monotonic() - began
        checks["an SR and a PDF in the Orthanc study"] = (
            len(found.get(SR_CLASS, [])) == 1 == len(found.get(PDF_CLASS, []))
        )
        sr_json = ""
        if SR_CLASS in found:
            [hit] = json.loads(orthanc._request("POST", "/tools/lookup", found[SR_CLASS][0].encode()))
            sr = pydicom.dcmread(io.BytesIO(orthanc._request("GET", f"/instances/{hit['ID']}/file")))
            sr_json = json.dumps(sr.to_json_dict())
        checks["the SR references the source SOP Instance UID"] = source.SOPInstanceUID in sr_json
    with sqlite3.connect(REPO_ROOT / "var" / "kdoct.db") as db:
        rows = db.execute(
            "SELECT id, label FROM predictions WHERE client_id = 'dicom:TESTPACS' AND frame_index IS NULL "
            "ORDER BY created_at DESC LIMIT 1"
        ).fetchall()
    checks["the records hold the volume's prediction, label cnv"] = bool(rows) and rows[0][1] == "cnv"
    # SQLite keeps a UUID as 32 hex digits; the SR names it with its dashes.
    checks["the SR leads back to that record"] = bool(rows) and str(rows[0][0]).replace(
        "-", ""
    ) in sr_json.replace("-", "")
    echo = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "KDOCT", "127.0.0.1", "11112"], capture_output=True
    )
    checks["a caller not on the list is rejected"] = echo.returncode != 0
    for check, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    print(f"{FRAMES}-frame OPT: SR and PDF in Orthanc {seconds:.1f} s after storescu; record {rows[:1]}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
