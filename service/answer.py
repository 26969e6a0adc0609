"""The answer contract: what the service answers to a classification (ClassifyResponse and its
parts) and what it answers for a prediction on record (PredictionOut). Pydantic models, so they document
the API (OpenAPI) and pin its shape in the tests; they sit below the routes because the layers under
them build and read them: the pipeline builds the answer (service/pipeline.py), the records are derived
from it (service/records.py), the DICOM SR encodes it (service/dicom_sr.py), FHIR maps a record
(service/fhir.py), and the routes (service/api/) answer them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassifyResponse",
    "Explanation",
    "FrameResult",
    "InputInfo",
    "ModelIdentity",
    "PredictionOut",
    "SecondOpinion",
    "Timing",
]

_PROBABILITIES = {"normal": 0.91, "drusen": 0.06, "cnv": 0.03}
_GRADABLE = (
    "the safety gate's verdict: false when the image failed the quality check or is out of the "
    "model's distribution (then `refer` is true and `reason` says why; the probabilities are still given "
    "but must not be read as a diagnosis); null when the gate is off (KDOCT_SAFETY_GATE=off)"
)
_REASON = (
    "why the image is not gradable: quality:blank, quality:colour, quality:saturated, quality:low_signal, "
    "quality:overexposed, quality:low_contrast, quality:noise, quality:geometry, quality:not_oct_like or "
    "out_of_distribution; null when gradable"
)
_OOD_SCORE = (
    "the out-of-distribution score (Mahalanobis distance of the model's features to the nearest class, "
    "per dimension); above the bundle's threshold the image is out_of_distribution. Null when the gate is "
    "off, and for a volume's own result"
)


class ModelIdentity(BaseModel):
    name: str = Field(examples=["kdoct-student-neh3"])
    version: str = Field(examples=["1.0.0"])
    sha256: str = Field(description="sha256 of the bundle's bundle.json, which pins every file of the bundle")


class Explanation(BaseModel):
    """A Grad-CAM heatmap (explain=true). Never stored: the service keeps no images."""

    method: str = Field("grad-cam", examples=["grad-cam"])
    class_name: str = Field(examples=["cnv"], description="the class explained: the model's label")
    target_layer: str = Field(examples=["conv_head"], description="the layer whose feature map is weighed")
    frame_index: int | None = Field(None, description="volumes: the frame explained (the label's strongest)")
    map: list[list[float]] = Field(description="the raw low-resolution map, rows of values in [0, 1]")
    map_shape: list[int] = Field(examples=[[12, 12]], description="[height, width] of `map`")
    overlay_png_base64: str = Field(
        description="PNG (RGB, long side <= 512 px): the map in the Turbo colormap over the grayscale B-scan"
    )
    compute_ms: float = Field(description="ms spent computing this explanation")


class SecondOpinion(BaseModel):
    # The pipeline adds the explanation after building the answer: assignments are validated too.
    model_config = ConfigDict(validate_assignment=True)

    model: ModelIdentity
    label: str = Field(examples=["normal"])
    probabilities: dict[str, float] = Field(examples=[_PROBABILITIES])
    confidence: float = Field(ge=0, le=1, examples=[0.88])
    agrees: bool = Field(description="whether the teacher's label equals the student's")
    frames_reviewed: int | None = Field(None, description="volumes only: frames the teacher reviewed")
    explanation: Explanation | None = Field(None, description="explain=true: the teacher's Grad-CAM heatmap")


class FrameResult(BaseModel):
    frame_index: int
    prediction_id: str
    label: str
    probabilities: dict[str, float]
    confidence: float = Field(ge=0, le=1)
    refer: bool
    second_opinion: SecondOpinion | None = None
    gradable: bool | None = Field(None, description=_GRADABLE)
    reason: str | None = Field(None, description=_REASON, examples=[None, "quality:blank"])
    ood_score: float | None = Field(None, description=_OOD_SCORE)


class InputInfo(BaseModel):
    format: str = Field(
        examples=["jpeg"],
        description="png, jpeg, tiff, bmp or dicom, decided from the bytes; tensor for a preprocessed "
        "tensor sent over the Open Inference Protocol (POST /v2/models/{name}/infer)",
    )
    width: int
    height: int
    frames: int = Field(1, description="number of frames (DICOM volumes: more than 1)")
    sha256: str = Field(description="sha256 of the uploaded bytes, as recorded")


class Timing(BaseModel):
    model_config = ConfigDict(validate_assignment=True)  # total is set when the answer is complete

    decode: float = Field(description="ms: waiting for and running decode and preprocessing")
    queue: float = Field(description="ms: waiting in the batch queue(s)")
    inference: float = Field(description="ms: runtime calls (student, plus teacher when asked)")
    total: float = Field(description="ms: from the request's arrival to the answer")


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        validate_assignment=True,  # the explanation is added after the answer is built
        json_schema_extra={
            "examples": [
                {
                    "prediction_id": "5b0c1f0e-8f55-4a53-9d0e-3b8c2a3c6f10",
                    "request_id": "c0ffee12",
                    "model": {"name": "kdoct-student-neh3", "version": "1.0.0", "sha256": "9f2c…"},
                    "label": "normal",
                    "probabilities": _PROBABILITIES,
                    "confidence": 0.91,
                    "refer": False,
                    "gradable": True,
                    "reason": None,
                    "ood_score": 0.84,
                    "second_opinion": None,
                    "frames": None,
                    "volume_id": None,
                    "input": {"format": "jpeg", "width": 512, "height": 496, "frames": 1, "sha256": "3e1a…"},
                    "timing_ms": {"decode": 2.1, "queue": 0.1, "inference": 8.3, "total": 11.0},
                }
            ]
        },
    )

    prediction_id: str = Field(description="id of the recorded prediction (the volume result for volumes)")
    request_id: str = Field(description="the X-Request-ID header of the request, or a generated id")
    model: ModelIdentity
    label: str = Field(description="the predicted class (volumes: the most severe frame class)")
    probabilities: dict[str, float] = Field(description="calibrated probability of every class, summing to 1")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of `label`")
    refer: bool = Field(
        description="true when the image is not gradable, the student is unsure or the teacher disagrees: "
        "human review"
    )
    gradable: bool | None = Field(
        None, description=_GRADABLE + ". Volumes: whether any frame is gradable (only those decide)"
    )
    reason: str | None = Field(None, description=_REASON, examples=[None, "out_of_distribution"])
    ood_score: float | None = Field(None, description=_OOD_SCORE)
    second_opinion: SecondOpinion | None = Field(
        description="the teacher's answer when it was asked, else null"
    )
    frames: list[FrameResult] | None = Field(description="DICOM only: one result per frame")
    volume_id: str | None = Field(
        None, description="multi-frame DICOM: a hash of the upload, never a DICOM UID"
    )
    input: InputInfo
    timing_ms: Timing
    explanation: Explanation | None = Field(
        None, description="explain=true only: the student's Grad-CAM heatmap for `label` (not stored)"
    )


# One prediction record as read back (GET /predictions/{id}, GET /predictions): the stored row, its link in
# the chain included; what service/fhir.py maps to a FHIR Bundle. (A comment, not a docstring: pydantic
# would publish a docstring in the OpenAPI schema.)
class PredictionOut(BaseModel):
    id: uuid.UUID
    sequence: int
    request_id: str = Field(
        description="keyed hash (hmac-sha256:...) of the X-Request-ID the prediction was made under; "
        "find a prediction by the id you sent with the `request_id` filter of GET /predictions"
    )
    created_at: datetime
    client_id: str | None
    model_name: str
    model_version: str
    model_sha256: str
    teacher_model_name: str | None
    teacher_model_version: str | None
    teacher_model_sha256: str | None
    input_sha256: str = Field(
        description="sha256 of the uploaded bytes (format tensor: of the image's little-endian float32 bytes)"
    )
    format: str
    width: int
    height: int
    frame_index: int | None
    volume_id: str | None
    probabilities: dict[str, float]
    label: str
    confidence: float
    refer: bool
    second_opinion: dict[str, Any] | None
    timing_ms: dict[str, float]
    gradable: bool | None = Field(
        description="the safety gate's verdict; null for records made with the gate off or before it existed"
    )
    gate_reason: str | None = Field(description="why the image was not gradable (see POST /classify)")
    ood_score: float | None
    row_hash: str = Field(description="this record's link in the audit hash chain")
