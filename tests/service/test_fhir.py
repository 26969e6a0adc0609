"""GET /predictions/{id} as HL7 FHIR R4: real B-scans, a blank image and a 3-frame DICOM volume through
POST /classify, each record fetched as FHIR (Accept header and format=fhir) and every resource validated
with the fhir.resources R4B models, plus the checks those models do not make (required code values,
references that resolve inside the Bundle, no patient)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from PIL import Image
from sqlalchemy import create_engine, text

from kdoct_testing.uploads import PATIENT_ID, PATIENT_NAME, encode, jpeg_gray, make_dicom
from service import fhir
from service.answer import PredictionOut
from service.app import create_app

FHIR_JSON = "application/fhir+json"
READ_ROUTE = "/predictions/{prediction_id}"

# Codes the R4 spec binds as required, which the R4B models accept unchecked.
REQUIRED_CODES = {
    ("Bundle", "type"): {"document", "message", "transaction", "transaction-response", "batch"}
    | {"batch-response", "history", "searchset", "collection"},
    ("DiagnosticReport", "status"): {"registered", "partial", "preliminary", "final", "amended"}
    | {"corrected", "appended", "cancelled", "entered-in-error", "unknown"},
    ("Observation", "status"): {"registered", "preliminary", "final", "amended", "corrected"}
    | {"cancelled", "entered-in-error", "unknown"},
    ("Device", "status"): {"active", "inactive", "entered-in-error", "unknown"},
}
DEVICE_NAME_TYPES = {"udi-label-name", "user-friendly-name", "patient-reported-name", "manufacturer-name"}
DEVICE_NAME_TYPES |= {"model-name", "other"}


@pytest.fixture
def app_client(make_settings, tmp_path):
    database_url = f"sqlite:///{tmp_path}/kdoct.db"
    settings = make_settings(database_url=database_url, spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as client:
        client.database_url = database_url
        yield client


def _post(client: TestClient, data: bytes, name: str, **params) -> dict:
    response = client.post("/classify", files={"file": (name, data)}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _reads(client: TestClient, prediction_id: str) -> int:
    engine = create_engine(client.database_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM prediction_reads WHERE prediction_id = :id AND route = :route")
            # SQLite stores the uuid as 32 hex characters.
            return conn.execute(query, {"id": uuid.UUID(prediction_id).hex, "route": READ_ROUTE}).scalar()
    finally:
        engine.dispose()


def _fhir(client: TestClient, prediction_id: str) -> dict:
    """The record as FHIR, asked both ways; both answers must be the same document."""
    by_header = client.get(f"/predictions/{prediction_id}", headers={"Accept": FHIR_JSON})
    by_query = client.get(f"/predictions/{prediction_id}", params={"format": "fhir"})
    for response in (by_header, by_query):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_JSON)
    assert by_header.json() == by_query.json()
    return by_header.json()


def _keys_and_strings(value, keys: set, strings: list) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            _keys_and_strings(item, keys, strings)
    elif isinstance(value, list):
        for item in value:
            _keys_and_strings(item, keys, strings)
    elif isinstance(value, str):
        strings.append(value)


def _validated(bundle: dict) -> dict[str, list[dict]]:
    """Every resource validated by its R4B model; the spec's rules the models skip checked here.
    Returns the resources by type."""
    Bundle.model_validate(bundle)
    assert bundle["type"] in REQUIRED_CODES[("Bundle", "type")]
    full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
    by_type: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        kind = resource["resourceType"]
        get_fhir_model_class(kind).model_validate(resource)
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        if (kind, "status") in REQUIRED_CODES:
            assert resource["status"] in REQUIRED_CODES[(kind, "status")]
        if kind == "Observation":  # obs-6: a value or the reason it is absent, never both
            values = [key for key in resource if key.startswith("value")]
            assert len(values) + ("dataAbsentReason" in resource) == 1, resource
        if kind == "Device":
            assert {name["type"] for name in resource["deviceName"]} <= DEVICE_NAME_TYPES
        by_type.setdefault(kind, []).append(resource)
    keys: set = set()
    strings: list = []
    _keys_and_strings(bundle, keys, strings)
    references = [s for s in strings if s.startswith("urn:uuid:")]
    report_ids = {i["value"] for r in by_type["DiagnosticReport"] for i in r["identifier"]}
    assert set(references) - report_ids <= full_urls, "a reference that does not resolve in the Bundle"
    # No patient, not even a placeholder: the records have none.
    assert not keys & {"subject", "patient"}
    assert "Patient" not in by_type
    assert not any(PATIENT_ID in s or PATIENT_NAME.split("^")[0] in s for s in strings)
    assert len(by_type["DiagnosticReport"]) == 1
    return by_type


def _observation(by_type: dict, code: str) -> dict:
    found = [o for o in by_type["Observation"] if o["code"]["coding"][0]["code"] == code]
    assert len(found) == 1, code
    return found[0]


def _probabilities(observation: dict) -> dict[str, float]:
    return {
        c["code"]["coding"][0]["code"].removeprefix("probability-"): c["valueQuantity"]["value"]
        for c in observation["component"]
        if c["code"]["coding"][0]["code"].startswith("probability-")
    }


def _component(observation: dict, code: str) -> dict | None:
    found = [c for c in observation.get("component", []) if c["code"]["coding"][0]["code"] == code]
    return found[0] if found else None


def _check_round_trip(bundle: dict, record: dict) -> dict[str, list[dict]]:
    """The FHIR form says what the JSON record says."""
    by_type = _validated(bundle)
    report = by_type["DiagnosticReport"][0]
    assert report["id"] == record["id"] and report["status"] == "preliminary"
    assert report["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{record['id']}"}]
    created = datetime.fromisoformat(record["created_at"])
    assert datetime.fromisoformat(report["issued"]) == (
        created if created.tzinfo else created.replace(tzinfo=UTC)
    )
    assert len(report["result"]) == len(by_type["Observation"])

    classification = _observation(by_type, "oct-classification")
    assert classification["valueCodeableConcept"]["coding"][0] == {
        "system": fhir.KDOCT_CLASS_SYSTEM,
        "code": record["label"],
        "display": fhir.CLASS_DISPLAY[record["label"]],
    }
    assert _probabilities(classification) == pytest.approx(record["probabilities"], abs=0)
    assert _observation(by_type, "referral")["valueBoolean"] is record["refer"]

    gate = _observation(by_type, "safety-gate")
    assert gate["valueBoolean"] is record["gradable"]
    reason = _component(gate, "gate-reason")
    assert (reason and reason["valueCodeableConcept"]["coding"][0]["code"]) == (record["gate_reason"] or None)
    ood = _component(gate, "ood-score")
    assert (ood and ood["valueQuantity"]["value"]) == pytest.approx(record["ood_score"])
    assert ("conclusionCode" in report) is record["gradable"]

    devices = {
        i["value"]: d
        for d in by_type["Device"]
        for i in d["identifier"]
        if i["system"] == fhir.MODEL_SHA256_SYSTEM
    }
    student = devices[record["model_sha256"]]
    assert student["deviceName"] == [{"name": record["model_name"], "type": "model-name"}]
    assert student["version"][0] == {"value": record["model_version"]}
    assert classification["device"] == {"reference": f"urn:uuid:{student['id']}"}

    if record["second_opinion"] is None:
        assert len(devices) == 1
        assert not any(o["code"]["coding"][0]["code"] == "second-opinion" for o in by_type["Observation"])
    else:
        opinion = record["second_opinion"]
        teacher = devices[record["teacher_model_sha256"]]
        assert teacher["deviceName"][0]["name"] == record["teacher_model_name"]
        second = _observation(by_type, "second-opinion")
        assert second["device"] == {"reference": f"urn:uuid:{teacher['id']}"}
        assert second["valueCodeableConcept"]["coding"][0]["code"] == opinion["label"]
        assert _probabilities(second) == pytest.approx(opinion["probabilities"], abs=0)
        assert _component(second, "agrees")["valueBoolean"] is opinion["agrees"]
    return by_type


def test_b_scans_as_fhir_round_trip_and_every_read_is_logged(app_client, sample_jpegs):
    paths = [sample_jpegs["CNV"][40], sample_jpegs["DRUSEN"][40], sample_jpegs["NORMAL"][40]]
    for index, path in enumerate(paths):
        policy = "always" if index % 2 == 0 else "never"
        answer = _post(app_client, path.read_bytes(), path.name, second_opinion=policy)
        pid = answer["prediction_id"]
        record = app_client.get(f"/predictions/{pid}").json()
        assert (record["second_opinion"] is not None) == (policy == "always")
        by_type = _check_round_trip(_fhir(app_client, pid), record)
        if record["label"] == "cnv":  # the one class with a public code (SNOMED CT, see service/fhir.py)
            codings = _observation(by_type, "oct-classification")["valueCodeableConcept"]["coding"]
            assert {"system": "http://snomed.info/sct", "code": "75971007"}.items() <= codings[1].items()
        # One JSON read, two FHIR reads: three rows, the same route, whatever the form.
        assert _reads(app_client, pid) == 3


def test_a_blank_image_is_reported_ungradable_without_a_coded_conclusion(app_client):
    answer = _post(
        app_client, encode(Image.new("L", (512, 496), 0), "PNG"), "blank.png", second_opinion="never"
    )
    record = app_client.get(f"/predictions/{answer['prediction_id']}").json()
    assert record["gradable"] is False and record["gate_reason"] == "quality:blank"
    by_type = _check_round_trip(_fhir(app_client, answer["prediction_id"]), record)
    report = by_type["DiagnosticReport"][0]
    assert "NOT GRADABLE (quality:blank)" in report["conclusion"] and "conclusionCode" not in report
    classification = _observation(by_type, "oct-classification")
    assert any("must not be read as a diagnosis" in note["text"] for note in classification["note"])
    assert _observation(by_type, "referral")["valueBoolean"] is True


def test_a_dicom_volume_gives_frames_and_a_volume_result_without_patient_data(app_client, sample_jpegs):
    scan = jpeg_gray(sample_jpegs["CNV"][41])
    frames = [scan, np.zeros_like(scan), scan[:, ::-1].copy()]
    answer = _post(app_client, make_dicom(frames), "volume.dcm", second_opinion="always")
    ids = [frame["prediction_id"] for frame in answer["frames"]] + [answer["prediction_id"]]
    for index, pid in enumerate(ids):
        record = app_client.get(f"/predictions/{pid}").json()
        bundle = _fhir(app_client, pid)
        by_type = _check_round_trip(bundle, record)
        classification = _observation(by_type, "oct-classification")
        assert _component(classification, "volume-id")["valueString"] == answer["volume_id"]
        frame_index = _component(classification, "frame-index")
        if index < len(frames):
            assert frame_index["valueInteger"] == index
        else:  # the volume result: no frame, and it says how its probabilities were made
            assert frame_index is None
            assert any("Volume result" in note["text"] for note in classification["note"])
            assert "of the volume" in by_type["DiagnosticReport"][0]["conclusion"]
    assert _fhir(app_client, ids[1])["entry"][0]["resource"]["conclusion"].count("NOT GRADABLE") == 1


def test_json_stays_the_default_and_an_unknown_id_is_404_and_not_logged(app_client, jpeg_paths):
    pid = _post(app_client, jpeg_paths[0].read_bytes(), "scan.jpeg", second_opinion="never")["prediction_id"]
    plain = app_client.get(f"/predictions/{pid}")
    assert plain.headers["content-type"].startswith("application/json") and plain.json()["id"] == pid
    # An explicit format=json wins over the header.
    forced = app_client.get(f"/predictions/{pid}", params={"format": "json"}, headers={"Accept": FHIR_JSON})
    assert forced.headers["content-type"].startswith("application/json") and "row_hash" in forced.json()
    assert app_client.get(f"/predictions/{pid}", params={"format": "xml"}).status_code == 422

    unknown = str(uuid.uuid4())
    for response in (
        app_client.get(f"/predictions/{unknown}", headers={"Accept": FHIR_JSON}),
        app_client.get(f"/predictions/{unknown}", params={"format": "fhir"}),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
    assert _reads(app_client, unknown) == 0

    operation = app_client.get("/openapi.json").json()["paths"]["/predictions/{prediction_id}"]["get"]
    assert FHIR_JSON in operation["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("accept", "form"),
    [
        # Issue 23, case 13: FHIR was answered for any header containing its name, q=0 included.
        ("application/fhir+json;q=0, application/json", "json"),
        ("application/fhir+json;q=0", "json"),
        ("application/fhir+json;q=0.4, application/json", "json"),
        ("application/fhir+json;q=0.5, */*", "json"),  # everything else at 1 outweighs FHIR at 0.5
        ("application/fhir+json;q=oops", "json"),  # an unreadable weight never turns FHIR on
        ("application/fhir+json", "fhir"),
        ("application/fhir+json; fhirVersion=4.0", "fhir"),  # the FHIR spec's version parameter
        ("application/json;q=0.5, Application/FHIR+JSON", "fhir"),
        ("application/fhir+json, application/json", "fhir"),  # equal weights: the form named by name
        ("application/fhir+json, application/json;q=0, */*", "fhir"),
    ],
)
def test_the_accept_header_is_weighed_by_its_q_values(app_client, jpeg_paths, accept, form):
    pid = _post(app_client, jpeg_paths[0].read_bytes(), "scan.jpeg", second_opinion="never")["prediction_id"]
    response = app_client.get(f"/predictions/{pid}", headers={"Accept": accept})
    assert response.status_code == 200, response.text
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type == (FHIR_JSON if form == "fhir" else "application/json"), accept
    if form == "json":
        assert response.json()["id"] == pid
    else:
        assert response.json()["resourceType"] == "Bundle"


def test_a_record_made_with_the_gate_off_says_the_gate_was_not_performed():
    # The mapping alone (service/fhir.py is pure): a record from before the gate or with it off.
    record = PredictionOut(
        id=uuid.uuid4(),
        sequence=1,
        request_id="hmac-sha256:" + "0" * 64,
        created_at=datetime(2026, 1, 2, 3, 4, 5),  # naive, as SQLite returns it: read as UTC
        client_id=None,
        model_name="m",
        model_version="1.0.0",
        model_sha256="a" * 64,
        teacher_model_name=None,
        teacher_model_version=None,
        teacher_model_sha256=None,
        input_sha256="b" * 64,
        format="png",
        width=512,
        height=496,
        frame_index=None,
        volume_id=None,
        probabilities={"normal": 0.8, "drusen": 0.15, "cnv": 0.05},
        label="normal",
        confidence=0.8,
        refer=False,
        second_opinion=None,
        timing_ms={"decode": 1.0, "queue": 0.1, "inference": 8.0, "total": 9.1},
        gradable=None,
        gate_reason=None,
        ood_score=None,
        row_hash="c" * 64,
    )
    bundle = fhir.prediction_bundle(record)
    assert bundle == json.loads(json.dumps(bundle)) == fhir.prediction_bundle(record)  # plain, stable
    by_type = _validated(bundle)
    gate = _observation(by_type, "safety-gate")
    assert gate["dataAbsentReason"]["coding"][0]["code"] == "not-performed" and "component" not in gate
    assert by_type["DiagnosticReport"][0]["issued"] == "2026-01-02T03:04:05+00:00"
    assert "conclusionCode" in by_type["DiagnosticReport"][0]
