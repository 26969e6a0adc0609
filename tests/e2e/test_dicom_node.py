"""The DICOM node against a real PACS: Debian's Orthanc (with its DICOMweb plugin) forwards OCT series
by the Lua script docs/INTEGRATION.md gives (deploy/orthanc/forward-opt.lua), a real node process
classifies them on tiny real bundles with its records on PostgreSQL, and the SR and the PDF must land
in Orthanc's study. dcmtk's storescu and echoscu play the modality."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
import sqlalchemy as sa

from kdoct_testing.dicom_node import c_store, running_node
from kdoct_testing.orthanc import running_orthanc
from kdoct_testing.postgres import create_database, drop_database
from kdoct_testing.server import free_port
from kdoct_testing.uploads import jpeg_gray, make_dicom

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
OPT_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
EXPORT_ATTEMPTS = 3


class Site:
    """Orthanc, the node, and what a test needs of them."""

    def __init__(self, orthanc, node, env: dict[str, str], workdir: Path, database_url: str) -> None:
        self.orthanc, self.node, self.env, self.workdir = orthanc, node, env, workdir
        self.engine = sa.create_engine(database_url)

    def metric(self, name: str, **labels: str) -> float:
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in httpx.get(f"{self.node.http_url}/metrics", timeout=10).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{wanted} not in the node's metrics")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "service", *args], cwd=self.workdir, env=self.env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def wait_for_results(self, study_uid: str, timeout_s: float = 90.0) -> dict[str, list[str]]:
        """The study's instances by SOP class once it holds an SR and a PDF."""
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, list[str]] = {}
            for sop_class, sop_instance in self.orthanc.instances_in_study(study_uid):
                found.setdefault(sop_class, []).append(sop_instance)
            if SR_CLASS in found and PDF_CLASS in found:
                return found
            assert time.monotonic() < deadline, f"no SR and PDF in the study after {timeout_s:.0f} s: {found}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def site(e2e_bundles, tmp_path_factory, repo_root) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("dicom-site")
    name, database_url = create_database()
    node_port = free_port()
    try:
        with running_orthanc(
            workdir / "orthanc",
            aet="TESTPACS",
            modalities={"kdoct": ("KDOCT", "127.0.0.1", node_port)},
            lua_scripts=[repo_root / "deploy" / "orthanc" / "forward-opt.lua"],
        ) as orthanc:
            env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
            env.update(
                KDOCT_STUDENT_BUNDLE=str(e2e_bundles["student"]),
                KDOCT_TEACHER_BUNDLE=str(e2e_bundles["teacher"]),
                KDOCT_SECOND_OPINION="always",
                KDOCT_INFERENCE_THREADS="1",
                KDOCT_DECODE_THREADS="2",
                KDOCT_DATABASE_URL=database_url,
                KDOCT_SPOOL_DIR=str(workdir / "spool"),
                KDOCT_AUDIT_KEY_FILE=str(workdir / "audit.key"),
                KDOCT_ANCHOR_FILE=str(workdir / "anchors.jsonl"),
                KDOCT_DICOM_PORT=str(node_port),
                KDOCT_DICOM_CALLERS="TESTPACS@127.0.0.1,KDOCT-RETRIEVE@127.0.0.1,MODALITY",
                KDOCT_DICOM_DESTINATION=f"TESTPACS@127.0.0.1:{orthanc.dicom_port}",
                KDOCT_DICOMWEB_URL=orthanc.dicomweb_url,
                KDOCT_DICOM_STORE_DIR=str(workdir / "store"),
                KDOCT_DICOM_DEAD_LETTER_DIR=str(workdir / "dead-letters"),
                KDOCT_DICOM_SERIES_IDLE_S="1",
                KDOCT_DICOM_EXPORT_ATTEMPTS=str(EXPORT_ATTEMPTS),
                KDOCT_DICOM_EXPORT_BACKOFF_S="0.2",
                KDOCT_LOG_LEVEL="info",
                PYTHONPATH=str(repo_root),
            )
            upgrade = subprocess.run(
                [sys.executable, "-m", "service", "db", "upgrade"], cwd=workdir, env=env,
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert upgrade.returncode == 0, upgrade.stderr
            with running_node(env, workdir, workdir / "node.log", dicom_port=node_port) as node:
                site = Site(orthanc, node, env, workdir, database_url)
                try:
                    yield site
                finally:
                    site.engine.dispose()
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def cnv_volume(sample_jpegs) -> list:
    """Real CNV B-scans of one size: a multi-frame OPT's frames."""
    frames = [jpeg_gray(path) for path in sample_jpegs["CNV"][:12]]
    shape = frames[0].shape
    return [frame for frame in frames if frame.shape == shape][:4]


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools (scripts/test-system.sh)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _orthanc_file(orthanc, sop_instance_uid: str) -> bytes:
    """The instance as Orthanc stores it (REST: /tools/lookup, then /instances/{id}/file)."""
    [found] = json.loads(orthanc._request("POST", "/tools/lookup", sop_instance_uid.encode()))
    return orthanc._request("GET", f"/instances/{found['ID']}/file")


def _storescu(port: int, path: Path, *, calling_ae: str = "MODALITY", called_ae: str = "TESTPACS") -> int:
    done = subprocess.run(
        ["storescu", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode


def _records(site: Site, client_id: str) -> list[dict]:
    with site.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, label, frame_index, format, second_opinion FROM predictions "
                "WHERE client_id = :client ORDER BY frame_index NULLS FIRST"
            ),
            {"client": client_id},
        )
        return [dict(row._mapping) for row in rows]


def test_an_oct_volume_stored_to_the_pacs_comes_back_as_an_sr_and_a_pdf_on_record(site, cnv_volume, tmp_path):
    """The acceptance path: storescu -> Orthanc -> (Lua, OPT only) -> kdoct -> SR + PDF -> Orthanc."""
    volume = make_dicom(cnv_volume)
    source = pydicom.dcmread(io.BytesIO(volume), stop_before_pixels=True)
    path = tmp_path / "volume.dcm"
    path.write_bytes(volume)
    assert _storescu(site.orthanc.dicom_port, path) == 0
    found = site.wait_for_results(source.StudyInstanceUID)
    assert found[OPT_CLASS] == [source.SOPInstanceUID]
    assert len(found[SR_CLASS]) == 1 and len(found[PDF_CLASS]) == 1

    sr = pydicom.dcmread(io.BytesIO(_orthanc_file(site.orthanc, found[SR_CLASS][0])))
    referenced = {
        item.ReferencedSOPInstanceUID
        for evidence in sr.CurrentRequestedProcedureEvidenceSequence
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {source.SOPInstanceUID}
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert not sr.PatientName and not sr.PatientID  # the source's identity never leaves with a report
    pdf = pydicom.dcmread(io.BytesIO(_orthanc_file(site.orthanc, found[PDF_CLASS][0])))
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")
    assert not pdf.PatientName and not pdf.PatientID
    for name, dataset in (("sr", sr), ("pdf", pdf)):
        written = tmp_path / f"{name}.dcm"
        dataset.save_as(written)
        assert _dciodvfy_errors(written) == [], name

    # On record: one row per frame and the volume's, the teacher's second opinion, from the PACS's AE.
    rows = _records(site, "dicom:TESTPACS")
    assert len(rows) == len(cnv_volume) + 1
    assert all(row["format"] == "dicom" for row in rows)
    volume_row = rows[0]
    assert volume_row["frame_index"] is None and volume_row["second_opinion"] is not None
    # The SR's groups are tracked by the recorded predictions' ids: the report leads back to its records.
    sr_text = json.dumps(sr.to_json_dict())
    assert all(str(row["id"]) in sr_text for row in rows)


def test_an_unknown_caller_is_rejected(site):
    done = subprocess.run(
        ["echoscu", "-aet", "INTRUDER", "-aec", "KDOCT", "127.0.0.1", str(site.node.dicom_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Rejected" in done.stdout + done.stderr or "rejected" in done.stdout + done.stderr
    ok = subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", "KDOCT", "127.0.0.1", str(site.node.dicom_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_a_pacs_outage_dead_letters_the_results_and_the_replay_delivers_them_once(site, cnv_volume):
    volume = make_dicom(cnv_volume[:2])
    study = pydicom.dcmread(io.BytesIO(volume), stop_before_pixels=True).StudyInstanceUID
    dead_before = site.metric("kdoct_dicom_dead_letters")
    site.orthanc.stop()
    try:
        assert c_store(site.node.dicom_port, [volume], calling_ae="MODALITY") == [0x0000]
        deadline = time.monotonic() + 90
        while site.metric("kdoct_dicom_dead_letters") < dead_before + 1:
            assert time.monotonic() < deadline, "the results were not dead-lettered within 90 s"
            time.sleep(0.5)
    finally:
        site.orthanc.start()
    with site.engine.connect() as conn:
        attempts = conn.execute(
            sa.text("SELECT kind, attempt, outcome FROM dicom_export_attempts ORDER BY created_at")
        ).all()
    failed = [row for row in attempts if row.outcome == "failed"]
    assert {row.attempt for row in failed} >= set(range(1, EXPORT_ATTEMPTS + 1))
    assert site.orthanc.instances_in_study(study) == []

    replay = site.cli("dicom-replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    classes = [sop_class for sop_class, _ in site.orthanc.instances_in_study(study)]
    assert sorted(classes) == sorted([SR_CLASS, PDF_CLASS])
    deadline = time.monotonic() + 30  # the node sees the replayed entries gone
    while site.metric("kdoct_dicom_dead_letters") != dead_before:
        assert time.monotonic() < deadline, "the node still counts the replayed dead letters"
        time.sleep(0.5)
    again = site.cli("dicom-replay")
    assert again.returncode == 0
    assert len(site.orthanc.instances_in_study(study)) == 2  # replaying again sends nothing twice


def test_a_study_already_in_the_pacs_is_classified_on_demand(site, cnv_volume):
    """dicom-retrieve: WADO-RS from Orthanc, C-STORE to the node; a secondary capture series the Lua
    script does not forward."""
    capture = make_dicom(cnv_volume[:1], sop_class=SC_CLASS, modality="OT")
    study = pydicom.dcmread(io.BytesIO(capture), stop_before_pixels=True).StudyInstanceUID
    site.orthanc.store(capture)
    time.sleep(2.5)  # stable in Orthanc, and not forwarded: not OPT
    assert [c for c, _ in site.orthanc.instances_in_study(study)] == [SC_CLASS]
    done = site.cli("dicom-retrieve", study)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "instances 1" in done.stdout
    found = site.wait_for_results(study)
    assert len(found[SR_CLASS]) == len(found[PDF_CLASS]) == 1
