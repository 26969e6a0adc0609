"""The Open Inference Protocol v2 (KServe's "V2", Triton's HTTP/REST protocol) over the student model,
so that tritonclient, KServe and other v2 clients can call the service without a kdoct client.

- GET /v2, /v2/health/live, /v2/health/ready: public, like /health.
- GET /v2/models/{name}[/versions/{version}][/ready] and POST .../infer: the classify scope. The
  metadata says no more than a classify answer does (the model's name and version).

Infer takes exactly one input: `image`, BYTES [N], each element an upload (PNG, JPEG, TIFF, BMP,
DICOM) decoded as POST /classify decodes it; or `input`, FP32 [N, 3, H, W], already preprocessed for
the student (decoding skipped; the safety gate's quality check needs pixels, so only its
out-of-distribution score judges a tensor). Every image goes through the same pipeline as /classify
(the student's micro-batcher, the teacher by policy), each is one prediction on record before the
answer, counted in the same metrics. Outputs: calibrated `probabilities` FP32 [N, classes], `label`,
`prediction_id` (BYTES [N]), `refer` and, with the gate on, `gradable` (BOOL [N]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.answer import ClassifyResponse
from service.api import health
from service.api.oip_codec import (
    HEADER_LENGTH,
    JSON_PARSE_BYTES_PER_BYTE,
    InferRequest,
    OutputTensor,
    ProtocolError,
    RequestInput,
    encode_response,
    json_part_length,
    parse_request,
)
from service.deps import (
    ClientDep,
    LoadedClassifierDep,
    PipelineDep,
    RecorderDep,
    SettingsDep,
    StateDep,
    TicketDep,
    get_client,
)
from service.inference.classifier import Classifier, ServedModel
from service.ingress.budget import Ticket
from service.pipeline import ClassificationPipeline
from service.problems import Problem
from service.records import Recorder

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
_classify_scope = [Depends(get_client)]

TENSOR_INPUT, IMAGE_INPUT = "input", "image"
# Triton's name for ONNX Runtime; the PyTorch runtime runs eager weights, not a Triton "libtorch" model.
_PLATFORMS = {"onnx": "onnxruntime_onnx", "torch": "pytorch"}
# How the safety gate judged the answer's images (the response's `safety_gate` parameter).
_GATE_IMAGES, _GATE_TENSOR, _GATE_OFF = "quality+ood", "ood_only", "off"


@router.get("", summary="Open Inference Protocol: server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": "kdoct", "version": request.app.version, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Open Inference Protocol: liveness")
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Open Inference Protocol: readiness (503 while not ready)")
async def server_ready(state: StateDep) -> Response:
    await health.ready(state)  # the same checks as /health/ready; raises 503 when not ready
    return Response(status_code=200)


def _student(classifier: Classifier, name: str, version: str | None) -> ServedModel:
    """The student, when `name` (and `version`) are its own; 404 otherwise."""
    student = classifier.student
    bundle = student.loaded.bundle
    if name != bundle.name:
        raise Problem("not-found", f"unknown model '{name[:128]}': this service serves '{bundle.name}'")
    if version is not None and version != bundle.version:
        raise Problem(
            "not-found", f"model '{name}' has no version '{version[:64]}' (it has '{bundle.version}')"
        )
    return student


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _outputs(student: ServedModel) -> list[dict[str, Any]]:
    outputs = [
        _tensor("probabilities", "FP32", [-1, len(student.loaded.class_names)]),
        _tensor("label", "BYTES", [-1]),
        _tensor("prediction_id", "BYTES", [-1]),
        _tensor("refer", "BOOL", [-1]),
    ]
    if student.loaded.gate is not None:
        outputs.append(_tensor("gradable", "BOOL", [-1]))
    return outputs


def _metadata(classifier: Classifier, name: str, version: str | None) -> dict[str, Any]:
    student = _student(classifier, name, version)
    loaded = student.loaded
    height, width = loaded.spec.input_size
    return {
        "name": loaded.bundle.name,
        "versions": [loaded.bundle.version],
        "platform": _PLATFORMS.get(loaded.runtime.name, loaded.runtime.name),
        "inputs": [
            _tensor(TENSOR_INPUT, "FP32", [-1, 3, height, width]),
            _tensor(IMAGE_INPUT, "BYTES", [-1]),
        ],
        "outputs": _outputs(student),
        # Not in the protocol's schema, which clients ignore: the order of the probabilities' columns.
        "parameters": {"class_names": ",".join(loaded.class_names)},
    }


async def _model_ready(state: StateDep, classifier: Classifier, name: str, version: str | None) -> Response:
    _student(classifier, name, version)
    await health.ready(state)
    return Response(status_code=200)


# The metadata answers as soon as the models are loaded (LoadedClassifierDep: 503 before), ready or not.
@router.get("/models/{name}", dependencies=_classify_scope, summary="Open Inference Protocol: model metadata")
async def model_metadata(classifier: LoadedClassifierDep, name: str) -> dict[str, Any]:
    return _metadata(classifier, name, None)


@router.get("/models/{name}/versions/{version}", dependencies=_classify_scope, include_in_schema=False)
async def model_version_metadata(classifier: LoadedClassifierDep, name: str, version: str) -> dict[str, Any]:
    return _metadata(classifier, name, version)


@router.get(
    "/models/{name}/ready", dependencies=_classify_scope, summary="Open Inference Protocol: model ready"
)
async def model_ready(state: StateDep, classifier: LoadedClassifierDep, name: str) -> Response:
    return await _model_ready(state, classifier, name, None)


@router.get("/models/{name}/versions/{version}/ready", dependencies=_classify_scope, include_in_schema=False)
async def model_version_ready(
    state: StateDep, classifier: LoadedClassifierDep, name: str, version: str
) -> Response:
    return await _model_ready(state, classifier, name, version)


@router.post(
    "/models/{name}/infer",
    summary="Open Inference Protocol: classify images (BYTES) or preprocessed tensors (FP32)",
    response_class=Response,
)
async def infer(
    request: Request,
    name: str,
    client_id: ClientDep,
    pipeline: PipelineDep,
    recorder: RecorderDep,
    ticket: TicketDep,
    settings: SettingsDep,
) -> Response:
    return await _infer(request, name, None, client_id, pipeline, recorder, ticket, settings.max_frames)


@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False, response_class=Response)
async def infer_version(
    request: Request,
    name: str,
    version: str,
    client_id: ClientDep,
    pipeline: PipelineDep,
    recorder: RecorderDep,
    ticket: TicketDep,
    settings: SettingsDep,
) -> Response:
    return await _infer(request, name, version, client_id, pipeline, recorder, ticket, settings.max_frames)


def _bad(message: str) -> Problem:
    return Problem("bad-request", message, reason="bad_request")


def _check_request(parsed: InferRequest, student: ServedModel, max_items: int) -> RequestInput:
    """The request's one input, checked against the model; the requested outputs exist."""
    if len(parsed.inputs) != 1:
        raise _bad(
            f"send exactly one input: '{TENSOR_INPUT}' (FP32 [N,3,H,W]) or '{IMAGE_INPUT}' (BYTES [N])"
        )
    given = parsed.inputs[0]
    height, width = student.loaded.spec.input_size
    expected = {TENSOR_INPUT: ("FP32", f"[N,3,{height},{width}]"), IMAGE_INPUT: ("BYTES", "[N]")}
    if given.name not in expected:
        raise _bad(f"unknown input '{given.name[:64]}': the inputs are '{TENSOR_INPUT}' and '{IMAGE_INPUT}'")
    datatype, shape = expected[given.name]
    if given.datatype != datatype:
        raise _bad(f"input '{given.name}' must be {datatype}, not {given.datatype}")
    valid = given.shape[1:] == (3, height, width) if given.name == TENSOR_INPUT else len(given.shape) == 1
    if not valid:
        raise _bad(f"input '{given.name}' must have shape {shape}, not {list(given.shape)}")
    if not 1 <= given.shape[0] <= max_items:
        raise _bad(
            f"input '{given.name}' must hold 1 to {max_items} images (KDOCT_MAX_FRAMES), not {given.shape[0]}"
        )
    if given.name == TENSOR_INPUT and not np.isfinite(given.value).all():
        raise _bad(f"input '{TENSOR_INPUT}' holds NaN or infinite values")
    known = {output["name"] for output in _outputs(student)}
    for output in parsed.outputs or []:
        if output.name not in known:
            raise _bad(f"unknown output '{output.name[:64]}': the outputs are {', '.join(sorted(known))}")
    return given


async def _infer(
    request: Request,
    name: str,
    version: str | None,
    client_id: str | None,
    pipeline: ClassificationPipeline,
    recorder: Recorder,
    ticket: Ticket,
    max_items: int,
) -> Response:
    student = _student(pipeline.classifier, name, version)
    parsed, given = await _read(request, student, pipeline, ticket, max_items)
    answers = await _answers(pipeline, given, ticket, request.state.request_id, request.state.started)
    await recorder.record(answers, client_id=client_id)
    return _response(parsed, student, answers, given.name)


async def _read(
    request: Request, student: ServedModel, pipeline: ClassificationPipeline, ticket: Ticket, max_items: int
) -> tuple[InferRequest, RequestInput]:
    """The body parsed and checked in the decode pool, off the event loop, its parse charged to the
    ticket first: the JSON tree while it lives, the binary part's copies for the request."""
    body = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    try:
        json_length = json_part_length(len(body), header_length)
    except ProtocolError as exc:
        raise _bad(str(exc)) from None
    tree = json_length * (JSON_PARSE_BYTES_PER_BYTE - 1)
    ticket.charge_bytes(tree + len(body), "parsing the request")

    def parse() -> tuple[InferRequest, RequestInput]:
        try:
            parsed = parse_request(body, header_length)
        except ProtocolError as exc:
            raise _bad(str(exc)) from None
        return parsed, _check_request(parsed, student, max_items)

    try:
        return await pipeline.intake.in_pool(parse)
    finally:
        ticket.refund(tree)  # the tree is gone; the values parsed from it stay charged (len(body))


async def _answers(
    pipeline: ClassificationPipeline, given: RequestInput, ticket: Ticket, request_id: str, started: float
) -> list[ClassifyResponse]:
    """One answer per image. All are prepared (decoded) before any is inferred, so one bad image fails
    the request before the model spends time on the others (service/intake.py)."""
    if given.name == TENSOR_INPUT:
        prepared = await pipeline.intake.prepare_tensors(given.value)
    else:
        try:
            prepared = await pipeline.intake.prepare_all(given.value, ticket)
        except Problem as problem:
            problem.detail = f"input '{IMAGE_INPUT}' {problem.detail}"
            raise
    return await pipeline.answer_all(prepared, request_id=request_id, started=started)


def _response(
    parsed: InferRequest, student: ServedModel, answers: list[ClassifyResponse], input_name: str
) -> Response:
    loaded = student.loaded
    names = loaded.class_names
    tensors = [
        OutputTensor(
            "probabilities",
            "FP32",
            np.array([[answer.probabilities[c] for c in names] for answer in answers], dtype=np.float32),
            {"class_names": ",".join(names)},
        ),
        OutputTensor("label", "BYTES", [answer.label for answer in answers]),
        OutputTensor("prediction_id", "BYTES", [answer.prediction_id for answer in answers]),
        OutputTensor("refer", "BOOL", np.array([answer.refer for answer in answers], dtype=bool)),
    ]
    if loaded.gate is not None:
        tensors.append(OutputTensor("gradable", "BOOL", np.array([a.gradable for a in answers], dtype=bool)))
    if parsed.outputs is None:
        chosen = [(tensor, parsed.binary_output) for tensor in tensors]
    else:
        by_name = {tensor.name: tensor for tensor in tensors}
        chosen = [
            (by_name[output.name], parsed.binary_output if output.binary is None else output.binary)
            for output in parsed.outputs
        ]
    gate = _GATE_OFF if loaded.gate is None else _GATE_TENSOR if input_name == TENSOR_INPUT else _GATE_IMAGES
    header: dict[str, Any] = {
        "model_name": loaded.bundle.name,
        "model_version": loaded.bundle.version,
        "parameters": {"safety_gate": gate},
    }
    if parsed.id is not None:
        header["id"] = parsed.id
    body, json_length = encode_response(header, chosen)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})
