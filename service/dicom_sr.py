"""A classification as a DICOM Comprehensive SR (TID 1500 Measurement Report, built with highdicom),
answered by POST /classify to `Accept: application/dicom` for a DICOM upload.

One measurement group for the answer (the image, or a volume's own result), plus one per frame of a
volume (referenced frame number = frame_index + 1), each holding: the finding (the label as a code),
the calibrated probability of every class (NUM, UCUM "1"), the safety gate's verdict (gradable and
its reason) and the referral, under an algorithm identification (model name, version, bundle sha256)
and a device observer for the model. Each group's tracking identifier is its prediction_id, so the
report leads back to its records.

The DICOM node's report of a whole series (build_series_report, from a SeriesResult): the same groups
for every instance of the series, in the order received, each referencing its own SOP Instance, and
every instance as evidence. Its UIDs come from the headline's prediction_id with their own entropy
(sr_uids), so the same result sent again is the same instance and never POST /classify's report.

Patient data: highdicom copies the Patient and General Study modules from its evidence. It is given a
data set built here from DicomSource (four UIDs, service/imaging.py) whose Type 2 patient and study
attributes are present but empty, so the report carries the source's Study Instance UID and references
its SOP Instance, and no name, id, birth date, sex or accession number. See _evidence for why.
"""

from __future__ import annotations

import io
from typing import NamedTuple

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ComprehensiveSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from service.answer import ClassifyResponse, FrameResult, ModelIdentity
from service.dicom_node.results import SeriesResult
from service.imaging import DicomSource

__all__ = [
    "DICOM_MEDIA_TYPE",
    "EMPTY_PATIENT_AND_STUDY",
    "PRIVATE_SCHEME",
    "ReportUids",
    "build_report",
    "build_series_report",
    "finding_code",
    "sr_uids",
]

DICOM_MEDIA_TYPE = "application/dicom"
# A private coding scheme (PS3.16 8.2: "99" prefix) for what no standard code says: the per-class
# probabilities, the gate's verdict and reasons, the referral, and classes without a SNOMED source.
PRIVATE_SCHEME = "99KDOCT"
MANUFACTURER = "kdoct"
SR_SERIES_NUMBER = 9901  # high, so the report sorts after the acquisition's own series in a viewer
# The entropy of the UIDs of a report (see _uids): an answer's and a series' reports never share one.
_ANSWER_ENTROPY = "kdoct-sr"
_SERIES_ENTROPY = "kdoct-series-sr"

# The classes of the NEH3 bundles, coded in SNOMED CT where a source was found for the code:
_FINDINGS = {
    # Normal (qualifier value): DICOM PS3.16 context groups, as shipped in pydicom.sr.codedict.
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    # Retinal drusen (finding): the SNOMED CT International browser (parent of "Macular drusen").
    "drusen": CodedConcept("247153005", "SCT", "Retinal drusen"),
    # Choroidal retinal neovascularization: HL7 Specialty Eyecare CDA IG, value set
    # PosteriorSegmentObservationCodes (http://hl7.org/cda/us/eyecare/ValueSet/PosteriorSegmentObservationCodes).
    "cnv": CodedConcept("75971007", "SCT", "Choroidal retinal neovascularization"),
}
_GRADABLE = CodedConcept("gradable", PRIVATE_SCHEME, "Gradable by the kdoct safety gate")
_NOT_GRADABLE_REASON = CodedConcept("gate-reason", PRIVATE_SCHEME, "Reason the image is not gradable")
_REFER = CodedConcept("refer", PRIVATE_SCHEME, "Clinician review advised")
_YES_NO = {True: CodedConcept("373066001", "SCT", "Yes"), False: CodedConcept("373067005", "SCT", "No")}
_UNITLESS = CodedConcept("1", "UCUM", "no units")  # a probability in [0, 1]


# The Type 2 attributes of the Patient and General Study modules: every report has them, empty (see
# _evidence for why); the Encapsulated PDF (service/dicom_node/pdf_report.py) too.
EMPTY_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class ReportUids(NamedTuple):
    series: str  # Series Instance UID
    instance: str  # SOP Instance UID


def finding_code(label: str) -> CodedConcept:
    """The label as a code: SNOMED CT for normal, drusen and CNV; else (UCSD4's dme, custom bundles)
    the private scheme, with the class name as its value."""
    return _FINDINGS.get(label) or CodedConcept(label, PRIVATE_SCHEME, f"kdoct class {label}")


def _probability_code(label: str) -> CodedConcept:
    return CodedConcept(f"p-{label}", PRIVATE_SCHEME, f"Calibrated probability of {label}")


def _evidence(source: DicomSource) -> Dataset:
    """The only data set highdicom sees of the source: the UIDs to reference, and the Type 2 attributes
    of the Patient and General Study modules, present (the SR IOD requires them) but empty.

    Why empty, PatientName and PatientID included: the service never keeps patient identity (not in
    answers, records, logs or metrics) and the report must not be the exception; PS3.3 allows Type 2
    attributes to be empty; the caller sent the image and knows the patient, so it files the report
    by the Study Instance UID and the referenced SOP Instance (a PACS router coerces the patient
    attributes from the study it references). Copying them would put the name and id into a file the
    service answers, from a request that may be logged or cached by proxies on the way back."""
    dataset = Dataset()
    dataset.StudyInstanceUID = source.study_instance_uid
    dataset.SeriesInstanceUID = source.series_instance_uid
    dataset.SOPInstanceUID = source.sop_instance_uid
    dataset.SOPClassUID = source.sop_class_uid
    for keyword in EMPTY_PATIENT_AND_STUDY:
        setattr(dataset, keyword, None)
    return dataset


def _group(
    result: ClassifyResponse | FrameResult,
    source: DicomSource,
    algorithm: AlgorithmIdentification,
    frame_number: int | None,
) -> MeasurementsAndQualitativeEvaluations:
    evaluations = []
    if result.gradable is not None:  # None: the gate is off (KDOCT_SAFETY_GATE=off), so no verdict
        evaluations.append(QualitativeEvaluation(_GRADABLE, _YES_NO[result.gradable]))
    if result.reason is not None:  # quality:<what> or out_of_distribution (docs/API.md), as its own code
        reason = CodedConcept(result.reason, PRIVATE_SCHEME, result.reason)
        evaluations.append(QualitativeEvaluation(_NOT_GRADABLE_REASON, reason))
    evaluations.append(QualitativeEvaluation(_REFER, _YES_NO[result.refer]))
    measurements = [
        Measurement(name=_probability_code(label), value=value, unit=_UNITLESS)
        for label, value in result.probabilities.items()
    ]
    if frame_number is not None:
        frames, where = [frame_number], f"frame {frame_number}"
    else:  # the whole instance: no frame numbers
        frames, where = None, "volume" if source.frames > 1 else "image"
    return MeasurementsAndQualitativeEvaluations(
        # The prediction_id as the identifier: the group's record (GET /predictions/{id}).
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["kdoct-tracking", result.prediction_id]),
            identifier=f"kdoct prediction {result.prediction_id} ({where})",
        ),
        # TID 1501's Finding (DCM 121071): the label.
        finding_type=finding_code(result.label),
        algorithm_id=algorithm,
        source_images=[SourceImageForMeasurementGroup(source.sop_class_uid, source.sop_instance_uid, frames)],
        qualitative_evaluations=evaluations,
        measurements=measurements,
    )


def _algorithm(model: ModelIdentity) -> AlgorithmIdentification:
    """TID 4019: the model's name and version, and the bundle's sha256 as the parameter pinning it."""
    return AlgorithmIdentification(
        name=model.name, version=model.version, parameters=[f"bundle sha256 {model.sha256}"]
    )


def _device(model: ModelIdentity) -> ObserverContext:
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            # One UID per bundle: the same model is the same observer in every report.
            uid=generate_uid(entropy_srcs=["kdoct-device", model.sha256]),
            name=model.name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{model.name} {model.version}",
        ),
    )


def _instance_groups(
    answer: ClassifyResponse, source: DicomSource
) -> list[MeasurementsAndQualitativeEvaluations]:
    """One instance's groups: its own result, then, for a volume, each frame's."""
    algorithm = _algorithm(answer.model)
    groups = [_group(answer, source, algorithm, None)]
    if source.frames > 1:
        groups += [_group(frame, source, algorithm, frame.frame_index + 1) for frame in answer.frames or []]
    return groups


def _encode(
    evidence: list[Dataset],
    groups: list[MeasurementsAndQualitativeEvaluations],
    model: ModelIdentity,
    uids: ReportUids,
    series_description: str,
) -> bytes:
    """The Comprehensive SR of these groups as a Part 10 file (explicit VR little endian)."""
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=_device(model)),
        procedure_reported=codes.DCM.OphthalmicTomography,
        imaging_measurements=groups,
    )
    sr = ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        # An algorithm's screening answer, not verified by a clinician: preliminary and unverified.
        is_final=False,
        is_verified=False,
        series_description=series_description,
        # A private scheme must be declared in the report that uses it (PS3.3 C.12.1.1.2).
        coding_schemes=[
            CodingSchemeIdentificationItem(
                PRIVATE_SCHEME,
                name="kdoct classification service concepts",
                responsible_organization=MANUFACTURER,
            )
        ],
    )
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _uids(entropy: str, prediction_id: str) -> ReportUids:
    """UIDs derived from a prediction_id: the same record always names the same report, so a report
    sent again is the same instance (a PACS keeps one copy)."""
    return ReportUids(
        series=generate_uid(entropy_srcs=[f"{entropy}-series", prediction_id]),
        instance=generate_uid(entropy_srcs=[entropy, prediction_id]),
    )


def build_report(answer: ClassifyResponse, source: DicomSource) -> bytes:
    """The answer as a DICOM Part 10 file (Comprehensive SR, explicit VR little endian)."""
    return _encode(
        [_evidence(source)],
        _instance_groups(answer, source),
        answer.model,
        _uids(_ANSWER_ENTROPY, answer.prediction_id),
        "kdoct OCT classification",
    )


def sr_uids(result: SeriesResult) -> ReportUids:
    """The series and SOP Instance UIDs of build_series_report(result), without building it: from the
    headline's prediction_id (its own entropy, so never the UIDs of build_report's answer)."""
    return _uids(_SERIES_ENTROPY, result.result.answer.prediction_id)


def build_series_report(result: SeriesResult) -> bytes:
    """One Comprehensive SR for a series classified by the DICOM node: every instance as evidence, and
    each instance's groups (its result, and a volume's frames) in the order received, each referencing
    its own SOP Instance. The series' result is the headline instance's group; the observer is its
    model (one pipeline classified the whole series)."""
    groups = [group for item in result.instances for group in _instance_groups(item.answer, item.source)]
    return _encode(
        [_evidence(item.source) for item in result.instances],
        groups,
        result.result.answer.model,
        sr_uids(result),
        "kdoct OCT series classification",
    )
