"""HL7 FHIR R4 form of one prediction record: what `GET /predictions/{id}` answers with
`Accept: application/fhir+json` (or `?format=fhir`). Pure: a record in (service/answer.py PredictionOut),
a JSON-ready dict out; no request, no database, no clock, so the same record always gives the same Bundle.

Shape: a Bundle of type "collection" holding a DiagnosticReport, its Observations and the Device(s)
(the student model, and the teacher when it gave a second opinion), referring to each other by
`urn:uuid:` fullUrls. Why a Bundle and not a DiagnosticReport with contained resources: FHIR keeps
`contained` for resources that have no identity of their own, and a contained resource cannot be
searched or referenced from outside its container. Here the Observations and the model Devices do
have an identity (a model bundle is the same Device in every report it made), and the integrators we
expect (an EHR's or a PACS's FHIR endpoint, an interface engine) unpack a Bundle's entries into
their own server, where a report's Observations are searchable by code and value.

Subject: left out. The records hold no patient identifier (docs/RECORDS.md), so there is no one to
refer to, and inventing a placeholder Patient would be worse than nothing: a receiver could merge it
with a real patient. DiagnosticReport.subject and Observation.subject are optional (0..1) in R4; the
receiving system attaches the report to its patient through the order it sent the scan under.

Status: "preliminary" on the report and every Observation. The result is a model's, never reviewed
by a clinician before it is recorded (feedback is stored beside it, not in it); FHIR's "final"
means complete and verified, which an unreviewed AI output is not.

Codes: the project's own code systems (https://kdoct.dev/fhir/CodeSystem/...) for everything; a
public code is added beside the project's where one exists for exactly that meaning and we found a
source for it (see PUBLIC_CLASS_CODES). None was found for "normal retina", for drusen of the macula
(SNOMED CT 33629003 is drusen of the *optic disc*, a different condition) or for an "AI
classification of an OCT B-scan" report, so those stay project-coded only.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.answer import PredictionOut

__all__ = [
    "FHIR_MEDIA_TYPE",
    "KDOCT_CLASS_SYSTEM",
    "KDOCT_GATE_REASON_SYSTEM",
    "KDOCT_OBSERVATION_SYSTEM",
    "MODEL_SHA256_SYSTEM",
    "prediction_bundle",
]

FHIR_MEDIA_TYPE = "application/fhir+json"

KDOCT_BASE = "https://kdoct.dev/fhir"
# The classes a model answers (kdoct/labels.py): code = the class name as recorded.
KDOCT_CLASS_SYSTEM = f"{KDOCT_BASE}/CodeSystem/oct-class"
# What the report and each Observation are about.
KDOCT_OBSERVATION_SYSTEM = f"{KDOCT_BASE}/CodeSystem/observation"
# The safety gate's reasons (docs/API.md), code = the reason as recorded, e.g. "quality:blank".
KDOCT_GATE_REASON_SYSTEM = f"{KDOCT_BASE}/CodeSystem/gate-reason"
# Identifies a model bundle by the sha256 of its manifest (GET /models), the strongest identity it has.
MODEL_SHA256_SYSTEM = f"{KDOCT_BASE}/NamingSystem/model-bundle-sha256"
MODEL_NAME_SYSTEM = f"{KDOCT_BASE}/NamingSystem/model-name"

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# Public codes of a class, added beside the project's own. Only codes with a source:
# - SNOMED CT 75971007 "Choroidal retinal neovascularization": HL7 Specialty Eyecare CDA IG, value set
#   PosteriorSegmentObservationCodes (https://build.fhir.org/ig/HL7/cda-eyecare/
#   ValueSet-PosteriorSegmentObservationCodes.html); OpenEyes' CNV drawing uses the same code.
PUBLIC_CLASS_CODES: dict[str, list[dict[str, str]]] = {
    "cnv": [{"system": SNOMED, "code": "75971007", "display": "Choroidal retinal neovascularization"}],
}

CLASS_DISPLAY = {
    "normal": "Normal retina",
    "drusen": "Drusen",
    "cnv": "Choroidal neovascularization",
    "dme": "Diabetic macular edema",
}

# DiagnosticReport.category: LOINC LP29684-5 "Radiology", the imaging category of US Core's
# DiagnosticReport category value set (http://hl7.org/fhir/us/core/ValueSet/us-core-diagnosticreport-
# category), which is how imaging reports are told from lab reports by most R4 receivers.
REPORT_CATEGORY = {
    "coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"}],
    "text": "Imaging (OCT)",
}
# Observation.category "imaging", FHIR's core observation-category code system
# (http://terminology.hl7.org/CodeSystem/observation-category; fixed for imaging findings by e.g. the
# HL7 Breast Radiology IG's CategoryFragment).
OBSERVATION_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}
# The gate was off when this prediction was made: "not-performed" of FHIR's data-absent-reason code
# system (http://terminology.hl7.org/CodeSystem/data-absent-reason, HL7 Terminology THO).
GATE_NOT_PERFORMED = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "not-performed",
            "display": "Not Performed",
        }
    ]
}

# Resource ids are derived from the prediction id (or the model sha256) under this namespace, so a
# record read twice gives the same ids, and one model is one Device across all its reports.
_NAMESPACE = uuid.UUID("5d1e3c36-8a4e-4f43-9a38-0c6c2f1b7e15")


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _ref(resource_id: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{resource_id}"}


def _instant(moment: datetime) -> str:
    # FHIR instants need a zone. The records are written in UTC; SQLite hands them back without one.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def class_concept(name: str) -> dict[str, Any]:
    coding = [{"system": KDOCT_CLASS_SYSTEM, "code": name, "display": CLASS_DISPLAY.get(name, name)}]
    return {"coding": coding + PUBLIC_CLASS_CODES.get(name, []), "text": name}


def _obs_code(code: str, display: str) -> dict[str, Any]:
    return {
        "coding": [{"system": KDOCT_OBSERVATION_SYSTEM, "code": code, "display": display}],
        "text": display,
    }


def _probability(value: float) -> dict[str, Any]:
    # A probability is a dimensionless ratio: UCUM unit "1".
    return {"value": float(value), "unit": "probability", "system": UCUM, "code": "1"}


def _probability_components(probabilities: Mapping[str, float]) -> list[dict[str, Any]]:
    # One component per class, coded by the probability's own code (not the class's disorder code: a
    # component coded "CNV" would read as a CNV finding, whatever its value).
    return [
        {
            "code": _obs_code(f"probability-{name}", f"Calibrated probability of {name}"),
            "valueQuantity": _probability(value),
        }
        for name, value in probabilities.items()
    ]


def _device(resource_id: str, name: str, version: str, sha256: str, role: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": resource_id,
        "identifier": [
            {"system": MODEL_SHA256_SYSTEM, "value": sha256},
            {"system": MODEL_NAME_SYSTEM, "value": f"{name}@{version}"},
        ],
        "status": "active",
        "deviceName": [{"name": name, "type": "model-name"}],
        "type": {"text": f"kdoct OCT classification model ({role})"},
        "version": [
            {"value": version},
            {"type": {"text": "model bundle sha256"}, "value": sha256},
        ],
    }


def prediction_bundle(record: PredictionOut) -> dict[str, Any]:
    """The FHIR R4 Bundle (type collection) of one prediction record, as a JSON-ready dict."""
    pid = str(record.id)
    when = _instant(record.created_at)
    student_id = _id("device", record.model_sha256)
    common = {
        "status": "preliminary",
        "category": [OBSERVATION_CATEGORY],
        "effectiveDateTime": when,
        "issued": when,
    }
    is_volume = record.volume_id is not None and record.frame_index is None
    observations = [
        _classification(record, pid, common, student_id, is_volume),
        {
            "resourceType": "Observation",
            "id": _id(pid, "referral"),
            **common,
            "code": _obs_code("referral", "Refer for clinician review"),
            "device": _ref(student_id),
            "valueBoolean": record.refer,
        },
        _gate_observation(record, pid, common, student_id),
    ]
    devices = [_device(student_id, record.model_name, record.model_version, record.model_sha256, "student")]
    if record.second_opinion is not None:
        opinion, teacher = _second_opinion(record.second_opinion, pid, common)
        observations.append(opinion)
        devices.append(teacher)
    resources = [_report(record, pid, when, observations, is_volume), *observations, *devices]
    return {
        "resourceType": "Bundle",
        "id": _id(pid, "bundle"),
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource} for resource in resources],
    }


def _classification(
    record: PredictionOut, pid: str, common: dict[str, Any], student_id: str, is_volume: bool
) -> dict[str, Any]:
    """The student's class and probabilities, with the frame or volume it is about."""
    components = _probability_components(record.probabilities)
    if record.frame_index is not None:
        components.append(
            {
                "code": _obs_code("frame-index", "Frame of the DICOM volume"),
                "valueInteger": record.frame_index,
            }
        )
    if record.volume_id is not None:
        components.append(
            {"code": _obs_code("volume-id", "Volume (hash of the upload)"), "valueString": record.volume_id}
        )
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id(pid, "classification"),
        **common,
        "code": _obs_code("oct-classification", "AI classification of an OCT B-scan"),
        "device": _ref(student_id),
        "valueCodeableConcept": class_concept(record.label),
        "component": components,
    }
    notes = []
    if is_volume:
        notes.append(
            "Volume result: the most severe class over the gradable frames; its probabilities are the "
            "per-class maxima over those frames, renormalised (a screening score, not calibrated)."
        )
    if record.gradable is False:
        notes.append(
            f"Not gradable ({record.gate_reason}): the label must not be read as a diagnosis; the "
            "probabilities are given for audit only."
        )
    if notes:
        observation["note"] = [{"text": text} for text in notes]
    return observation


def _gate_observation(
    record: PredictionOut, pid: str, common: dict[str, Any], student_id: str
) -> dict[str, Any]:
    """The safety gate's verdict, its reason and the out-of-distribution score; absent when it did not run."""
    gate: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id(pid, "safety-gate"),
        **common,
        "code": _obs_code("safety-gate", "Gradable by the safety gate"),
        "device": _ref(student_id),
    }
    if record.gradable is None:
        gate["dataAbsentReason"] = GATE_NOT_PERFORMED
        return gate
    gate["valueBoolean"] = record.gradable
    components = []
    if record.gate_reason is not None:
        reason = {"system": KDOCT_GATE_REASON_SYSTEM, "code": record.gate_reason}
        components.append(
            {
                "code": _obs_code("gate-reason", "Why the image is not gradable"),
                "valueCodeableConcept": {"coding": [reason], "text": record.gate_reason},
            }
        )
    if record.ood_score is not None:
        components.append(
            {
                "code": _obs_code("ood-score", "Out-of-distribution score"),
                "valueQuantity": {"value": float(record.ood_score), "system": UCUM, "code": "1"},
            }
        )
    if components:
        gate["component"] = components
    return gate


def _second_opinion(
    opinion: dict[str, Any], pid: str, common: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The teacher's Observation and its Device."""
    teacher = opinion["model"]
    teacher_id = _id("device", teacher["sha256"])
    components = _probability_components(opinion["probabilities"])
    components.append(
        {"code": _obs_code("agrees", "Teacher agrees with the student"), "valueBoolean": opinion["agrees"]}
    )
    if opinion.get("frames_reviewed") is not None:
        components.append(
            {
                "code": _obs_code("frames-reviewed", "Frames the teacher reviewed"),
                "valueInteger": opinion["frames_reviewed"],
            }
        )
    observation = {
        "resourceType": "Observation",
        "id": _id(pid, "second-opinion"),
        **common,
        "code": _obs_code("second-opinion", "Second opinion of the teacher model"),
        "device": _ref(teacher_id),
        "valueCodeableConcept": class_concept(opinion["label"]),
        "component": components,
    }
    device = _device(teacher_id, teacher["name"], teacher["version"], teacher["sha256"], "teacher")
    return observation, device


def _report(
    record: PredictionOut, pid: str, when: str, observations: list[dict[str, Any]], is_volume: bool
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": pid,
        # The prediction id, as a URI, is this report's business identifier: what GET /predictions/{id}
        # and the audit chain know it by.
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{pid}"}],
        "status": "preliminary",
        "category": [REPORT_CATEGORY],
        "code": _obs_code("oct-ai-report", "AI classification report of an OCT B-scan"),
        "effectiveDateTime": when,
        "issued": when,
        "result": [_ref(observation["id"]) for observation in observations],
        "conclusion": _conclusion(record, is_volume),
    }
    if record.gradable is not False:
        # A coded conclusion is what receivers file as a finding: never for an image the gate refused.
        report["conclusionCode"] = [class_concept(record.label)]
    return report


def _conclusion(record: PredictionOut, is_volume: bool) -> str:
    if is_volume:
        what = "volume"
    elif record.frame_index is not None:
        what = f"frame {record.frame_index}"
    else:
        what = "B-scan"
    text = (
        f"Preliminary AI classification ({record.model_name} {record.model_version}) of the {what}: "
        f"{record.label}, calibrated probability {record.confidence:.4g}."
    )
    if record.gradable is False:
        text += f" NOT GRADABLE ({record.gate_reason}): not a diagnosis."
    if record.refer:
        text += " Refer for clinician review."
    opinion = record.second_opinion
    if opinion is not None:
        text += f" Teacher: {opinion['label']} ({'agrees' if opinion['agrees'] else 'disagrees'})."
    return text
