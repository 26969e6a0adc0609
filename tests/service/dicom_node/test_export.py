"""Delivering the DICOM node's result objects to a real PACS (Orthanc, kdoct_testing/orthanc.py): C-STORE
and STOW-RS, each confirmed by QIDO-RS; no duplicates on a second delivery; an outage ends in bounded
attempts and a dead letter, every attempt on record and counted; `python -m service dicom-replay` then
delivers exactly the SR and the PDF once; the attempt log never stops a delivery."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from kdoct_testing.orthanc import running_orthanc
from kdoct_testing.server import free_port
from service.db.export_attempts import AttemptLog
from service.db.migrate import upgrade
from service.db.session import make_engine
from service.db.tables import DicomExportAttempt
from service.dicom_node.dead_letter import MANIFEST, DeadLetters
from service.dicom_node.export import SOP_CLASSES, Exporter, ResultObject
from service.dicom_node.peers import Peer

ROOT = Path(__file__).resolve().parents[3]
# pynetdicom 3.0.4 shuts down, but does not close, the socket of a refused connection (transport.py,
# connect): the garbage collector's ResourceWarning is pynetdicom's, not a leak of ours.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
ATTEMPTS = DicomExportAttempt.__table__


def _part10(dataset: Dataset) -> bytes:
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _base(kind: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASSES[kind]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = "20261205"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.SeriesNumber = 900 if kind == "sr" else 901
    ds.InstanceNumber = 1
    ds.Manufacturer = "kdoct"
    return ds


def make_objects(study_uid: str | None = None) -> list[ResultObject]:
    """A minimal valid Comprehensive SR and Encapsulated PDF of one study."""
    study_uid = study_uid or generate_uid()
    sr = _base("sr", study_uid)
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        "126000",
        "DCM",
        "Imaging Measurement Report",
    )
    sr.ConceptNameCodeSequence = DicomSequence([title])
    sr.ContinuityOfContent = "SEPARATE"
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.ContentSequence = DicomSequence([])
    pdf = _base("pdf", study_uid)
    pdf.Modality = "DOC"
    pdf.ConversionType = "WSD"
    pdf.BurnedInAnnotation = "YES"
    pdf.DocumentTitle = "kdoct OCT classification"
    pdf.ConceptNameCodeSequence = DicomSequence([])
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    return [
        ResultObject("sr", str(sr.SOPInstanceUID), study_uid, _part10(sr)),
        ResultObject("pdf", str(pdf.SOPInstanceUID), study_uid, _part10(pdf)),
    ]


def expected(objects: list[ResultObject]) -> list[tuple[str, str]]:
    return sorted((SOP_CLASSES[obj.kind], obj.sop_instance_uid) for obj in objects)


def counter(kind: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("kdoct_dicom_exports_total", {"kind": kind, "outcome": outcome}) or 0.0


def attempt_rows(url: str, prediction_id: str) -> list[dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ATTEMPTS)
                .where(ATTEMPTS.c.prediction_id == uuid.UUID(prediction_id))
                .order_by(ATTEMPTS.c.created_at)
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture
def records_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    upgrade(url)
    return url


@pytest.fixture
def attempt_log(records_url):
    engine = make_engine(records_url)
    yield AttemptLog.from_engine(engine)
    engine.dispose()


def exporter_for(pacs, attempt_log, dead_letter_dir: Path, *, cstore=True, stow=False, **kwargs) -> Exporter:
    values = {
        "calling_ae": "KDOCT",
        "destination": Peer(pacs.aet, "127.0.0.1", pacs.dicom_port) if cstore else None,
        "dicomweb_url": pacs.dicomweb_url,
        "stow": stow,
        "attempts": 3,
        "backoff_s": 0.05,
        "dead_letters": DeadLetters(dead_letter_dir),
        "attempt_log": attempt_log,
    }
    values.update(kwargs)
    return Exporter(**values)


def test_cstore_delivery_is_confirmed_by_qido(pacs, attempt_log, records_url, tmp_path) -> None:
    objects = make_objects()
    prediction_id = str(uuid.uuid4())
    exporter = exporter_for(pacs, attempt_log, tmp_path / "dead")
    assert exporter.deliver(prediction_id, objects) is True
    assert pacs.instances_in_study(objects[0].study_instance_uid) == expected(objects)
    rows = attempt_rows(records_url, prediction_id)
    destination = f"cstore {pacs.aet}@127.0.0.1:{pacs.dicom_port}"
    assert sorted((row["kind"], row["destination"], row["attempt"], row["outcome"]) for row in rows) == [
        ("pdf", destination, 1, "delivered"),
        ("sr", destination, 1, "delivered"),
    ]
    assert exporter.dead_letters.count() == 0


def test_stow_delivery_is_confirmed_by_qido(pacs, attempt_log, records_url, tmp_path) -> None:
    objects = make_objects()
    prediction_id = str(uuid.uuid4())
    exporter = exporter_for(pacs, attempt_log, tmp_path / "dead", cstore=False, stow=True)
    assert exporter.deliver(prediction_id, objects) is True
    assert pacs.instances_in_study(objects[0].study_instance_uid) == expected(objects)
    rows = attempt_rows(records_url, prediction_id)
    assert {(row["destination"], row["outcome"]) for row in rows} == {
        (f"stow {pacs.dicomweb_url}", "delivered")
    }
    assert len(rows) == 2


def test_a_second_delivery_sends_nothing_twice(pacs, attempt_log, records_url, tmp_path) -> None:
    objects = make_objects()
    exporter = exporter_for(pacs, attempt_log, tmp_path / "dead", stow=True)  # both ways
    before = pacs.instance_count()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert exporter.deliver(first, objects) is True
    assert exporter.deliver(second, objects) is True
    assert pacs.instances_in_study(objects[0].study_instance_uid) == expected(objects)
    assert pacs.instance_count() == before + 2
    # The second delivery found both objects at the destination and sent neither.
    rows = attempt_rows(records_url, second)
    assert len(rows) == 4 and {row["outcome"] for row in rows} == {"delivered"}
    assert {row["detail"] for row in rows} == {"already at the destination"}


def test_an_outage_dead_letters_then_replay_delivers_once(tmp_path, records_url, attempt_log) -> None:
    objects = make_objects()
    study = objects[0].study_instance_uid
    prediction_id = str(uuid.uuid4())
    dead_dir = tmp_path / "dead"
    with running_orthanc(tmp_path / "outage-pacs") as pacs:
        exporter = exporter_for(pacs, attempt_log, dead_dir, attempts=3, backoff_s=0.05)
        before = {
            (kind, outcome): counter(kind, outcome)
            for kind in ("sr", "pdf")
            for outcome in ("failed", "dead_lettered")
        }
        pacs.stop()
        started = time.monotonic()
        assert exporter.deliver(prediction_id, objects) is False
        assert time.monotonic() - started < 5  # 3 attempts, 0.05 + 0.1 s apart, refused at once
        for kind in ("sr", "pdf"):
            assert counter(kind, "failed") - before[(kind, "failed")] == 3
            assert counter(kind, "dead_lettered") - before[(kind, "dead_lettered")] == 1
        rows = attempt_rows(records_url, prediction_id)
        assert sorted((row["kind"], row["attempt"], row["outcome"]) for row in rows) == sorted(
            [(kind, attempt, "failed") for kind in ("sr", "pdf") for attempt in (1, 2, 3)]
            + [("sr", 3, "dead_lettered"), ("pdf", 3, "dead_lettered")]
        )
        for row in rows:
            assert study not in (row["detail"] or "") and objects[0].sop_instance_uid not in (
                row["detail"] or ""
            )
        letters = DeadLetters(dead_dir)
        assert letters.count() == 1
        assert REGISTRY.get_sample_value("kdoct_dicom_dead_letters") == 1
        (entry,) = letters.entries()
        manifest = (entry.path / MANIFEST).read_text()
        assert study not in manifest and all(obj.sop_instance_uid not in manifest for obj in objects)
        assert [item["attempts"] for item in json.loads(manifest)["objects"]] == [3, 3]
        assert {obj.sop_instance_uid for obj in entry.objects()} == {obj.sop_instance_uid for obj in objects}

        env = {key: value for key, value in os.environ.items() if not key.startswith("KDOCT_")}
        env.update(
            PYTHONPATH=str(ROOT),
            KDOCT_STUDENT_BUNDLE=str(tmp_path / "no-bundle"),  # required by the settings, unused here
            KDOCT_DATABASE_URL=records_url,
            KDOCT_DICOM_DESTINATION=f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
            KDOCT_DICOMWEB_URL=pacs.dicomweb_url,
            KDOCT_DICOM_DEAD_LETTER_DIR=str(dead_dir),
        )

        def replay() -> subprocess.CompletedProcess:
            command = [sys.executable, "-m", "service", "dicom-replay"]
            return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

        still_down = replay()
        assert still_down.returncode == 1, still_down.stderr
        assert still_down.stdout.strip() == "replayed 1, delivered 0, still dead-lettered 1"

        pacs.start()
        done = replay()
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "replayed 1, delivered 1, still dead-lettered 0"
        assert pacs.instances_in_study(study) == expected(objects)
        assert pacs.instance_count() == 2
        assert DeadLetters(dead_dir).count() == 0 and list(dead_dir.iterdir()) == []
        assert study not in done.stdout + done.stderr
        rows = attempt_rows(records_url, prediction_id)
        assert sorted((row["kind"], row["attempt"], row["outcome"]) for row in rows[-4:]) == [
            ("pdf", 4, "failed"), ("pdf", 5, "replayed"), ("sr", 4, "failed"), ("sr", 5, "replayed"),
        ]  # fmt: skip


def test_the_attempt_log_never_stops_a_delivery(pacs, tmp_path, caplog) -> None:
    """The records' database unreachable: the attempts go to the process log, the delivery goes on."""
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        exporter = exporter_for(pacs, AttemptLog.from_engine(engine), tmp_path / "dead")
        objects = make_objects()
        prediction_id = str(uuid.uuid4())
        with caplog.at_level("WARNING", logger="service.db.export_attempts"):
            assert exporter.deliver(prediction_id, objects) is True
    finally:
        engine.dispose()
    assert pacs.instances_in_study(objects[0].study_instance_uid) == expected(objects)
    assert "not on record" in caplog.text and prediction_id in caplog.text
    assert objects[0].study_instance_uid not in caplog.text


@pytest.mark.postgres
def test_attempts_on_record_in_postgresql(pacs, tmp_path) -> None:
    from kdoct_testing.postgres import create_database, drop_database

    name, url = create_database()
    try:
        upgrade(url)
        engine = make_engine(url)
        try:
            exporter = exporter_for(pacs, AttemptLog.from_engine(engine), tmp_path / "dead", stow=True)
            prediction_id = str(uuid.uuid4())
            assert exporter.deliver(prediction_id, make_objects()) is True
        finally:
            engine.dispose()
        rows = attempt_rows(url, prediction_id)
        assert sorted((row["kind"], row["destination"].split()[0], row["outcome"]) for row in rows) == [
            ("pdf", "cstore", "delivered"), ("pdf", "stow", "delivered"),
            ("sr", "cstore", "delivered"), ("sr", "stow", "delivered"),
        ]  # fmt: skip
    finally:
        drop_database(name)


def test_dead_letters_are_private_durable_and_never_half_read(tmp_path) -> None:
    letters = DeadLetters(tmp_path / "dead")
    objects = make_objects()
    entry = letters.put(
        str(uuid.uuid4()), objects, attempts=2, errors={objects[0].sop_instance_uid: "ConnectionError"}
    )
    assert stat.S_IMODE((tmp_path / "dead").stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in entry.path.iterdir()} == {0o600}
    assert [obj.data for obj in entry.objects()] == [obj.data for obj in objects]
    # A crash mid-write: a temporary directory, or an entry without its manifest, is not an entry.
    (tmp_path / "dead" / ".tmp-crashed").mkdir()
    (tmp_path / "dead" / ".tmp-crashed" / "0-sr.dcm").write_bytes(objects[0].data)
    half = tmp_path / "dead" / "20261205T000000000000Z-half"
    half.mkdir()
    (half / "0-sr.dcm").write_bytes(objects[0].data)
    assert [found.name for found in letters.entries()] == [entry.name]
    assert letters.count() == 1
    letters.remove(entry)
    assert letters.count() == 0
    assert REGISTRY.get_sample_value("kdoct_dicom_dead_letters") == 0
