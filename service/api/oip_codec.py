"""The Open Inference Protocol v2's request and response bodies, with the binary tensor data extension:
bytes in, typed tensors out, and back. Nothing here knows the model, FastAPI or the records
(service/api/inference_protocol.py joins them).

A body is a JSON object, optionally followed by binary tensor data; the `Inference-Header-Content-Length`
header then gives the JSON's length. A binary input says its size in `parameters.binary_data_size`, and
the inputs' binary data follow one another in the order of the inputs. Binary data are little-endian,
row-major; a BOOL is one byte; a BYTES element is a 4-byte little-endian length and the bytes.

Every malformed body raises ProtocolError, whose message is the 400 answer: a client is told what was
wrong, and nothing a client sends can turn into a 500. Nothing is computed from a client's numbers before
they are checked: integers longer than 18 digits are refused by the JSON reader itself, a shape's rank
and dimensions are bounded before its element count is taken, and names and types are checked before
they are used as keys. Parsing costs CPU and memory in proportion to the body: callers run it off the
event loop, with the body's size charged to the request first (service/api/inference_protocol.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "OutputTensor",
    "ProtocolError",
    "RequestInput",
    "RequestedOutput",
    "encode_response",
    "json_part_length",
    "parse_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
# The datatypes this service takes or answers, with their element size in binary (BYTES: variable).
_ITEM_SIZE = {"FP32": 4, "BOOL": 1, "BYTES": None}
_LENGTH = struct.Struct("<I")
# The inputs this service takes are [N] and [N, 3, H, W]; a dimension beyond 2**31 is never a real one.
MAX_RANK = 4
MAX_DIMENSION = 1 << 31
MAX_ID_CHARS = 256
_MAX_INT_DIGITS = 18
_BYTE_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit also accepts '²'
# Memory the JSON reader may take per byte of JSON at worst (an empty list, "[]," is 3 bytes and 64 in
# Python; a float, "0.5," 4 bytes and 32): what a caller charges before parsing.
JSON_PARSE_BYTES_PER_BYTE = 24


class ProtocolError(ValueError):
    """The body does not follow the protocol; the message says how (answered as 400)."""


@dataclass(frozen=True)
class RequestInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # FP32: a float32 array of `shape`; BYTES: the elements' bytes (base64-decoded when sent as JSON).
    value: np.ndarray | list[bytes]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: as the request's `binary_data_output` says


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_output: bool  # the request's `binary_data_output` parameter


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str  # FP32, BOOL or BYTES
    value: np.ndarray | list[str]  # BYTES: ASCII strings
    parameters: dict[str, Any] | None = None

    @property
    def shape(self) -> list[int]:
        return [len(self.value)] if isinstance(self.value, list) else list(self.value.shape)


def json_part_length(body_size: int, header_length: str | None) -> int:
    """How many bytes of a body of `body_size` are JSON; `header_length` is the
    Inference-Header-Content-Length header, if sent."""
    if header_length is None:
        return body_size
    if not _BYTE_COUNT.fullmatch(header_length.strip()):
        raise ProtocolError(f"{HEADER_LENGTH} must be a byte count, not {header_length[:32]!r}")
    length = int(header_length)
    if length > body_size:
        raise ProtocolError(f"{HEADER_LENGTH} is {length}, but the body has only {body_size} bytes")
    return length


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ProtocolError(f"an integer of {len(text)} digits: integers here have at most {_MAX_INT_DIGITS}")
    return int(text)


def _no_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not JSON: send numbers")


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in `body`; `header_length` is the Inference-Header-Content-Length header, if sent."""
    length = json_part_length(len(body), header_length)
    view = memoryview(body)
    header, binary = view[:length], view[length:]
    try:
        request = json.loads(bytes(header), parse_int=_bounded_int, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: too deep
        where = f"the first {HEADER_LENGTH} bytes are" if header_length is not None else "the body is"
        raise ProtocolError(f"{where} not a JSON object: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the inference request must be a JSON object")
    parameters = _object(request.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false")
    request_id = request.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS):
        raise ProtocolError(f"id must be a string of at most {MAX_ID_CHARS} characters")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("inputs must be a non-empty list of tensors")
    inputs, offset = [], 0
    for index, raw in enumerate(raw_inputs):
        parsed, used = _input(raw, f"inputs[{index}]", binary, offset)
        inputs.append(parsed)
        offset += used
    if offset != len(binary):
        raise ProtocolError(
            f"the binary part of the body is {len(binary)} bytes, but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    return InferRequest(request_id, inputs, _outputs(request.get("outputs")), binary_output)


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def _input(raw: Any, where: str, binary: memoryview, offset: int) -> tuple[RequestInput, int]:
    """One input and how many bytes of the binary part it took."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.name must be a non-empty string")
    where = f"input '{name[:64]}'"
    if not isinstance(datatype, str) or datatype not in _ITEM_SIZE or datatype == "BOOL":
        shown = datatype[:16] if isinstance(datatype, str) else type(datatype).__name__
        raise ProtocolError(f"{where}: datatype {shown!r} is not one of FP32, BYTES")
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK:
        raise ProtocolError(f"{where}: shape must be a list of 1 to {MAX_RANK} dimensions")
    if not all(type(dim) is int and 0 <= dim < MAX_DIMENSION for dim in shape):  # bool is no dimension
        raise ProtocolError(f"{where}: shape dimensions must be integers from 0 to {MAX_DIMENSION - 1}")
    count = math.prod(shape)  # at most 2**124: a plain integer, cheap
    size = _object(raw.get("parameters"), f"{where}: parameters").get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise ProtocolError(f"{where}: neither data nor parameters.binary_data_size")
        value, used = _from_json(raw["data"], datatype, count, where), 0
    else:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise ProtocolError(
                f"{where}: binary_data_size {size} runs past the end of the body (send the JSON's length "
                f"in {HEADER_LENGTH})"
            )
        value, used = _from_binary(binary[offset : offset + size], datatype, count, where), size
    if datatype == "FP32":
        value = value.reshape(shape)
    return RequestInput(name, datatype, tuple(shape), value), used


def _flatten(data: Any) -> list:
    """The protocol allows tensor data flat or nested row-major: flatten it."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json(data: Any, datatype: str, count: int, where: str) -> np.ndarray | list[bytes]:
    flat = _flatten(data)
    if len(flat) != count:
        raise ProtocolError(f"{where}: data has {len(flat)} elements, its shape says {count}")
    if datatype == "FP32":
        if not all(isinstance(item, int | float) and not isinstance(item, bool) for item in flat):
            raise ProtocolError(f"{where}: FP32 data must be numbers")
        try:
            return np.asarray(flat, dtype=np.float32)
        except (OverflowError, ValueError):
            raise ProtocolError(f"{where}: FP32 data out of the float32 range") from None
    # Image files are not text: as JSON, each BYTES element is the base64 of the file's bytes.
    items = []
    for index, item in enumerate(flat):
        if not isinstance(item, str):
            raise ProtocolError(f"{where}: element {index} must be a base64 string")
        try:
            items.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError(
                f"{where}: element {index} is not base64 (as JSON, BYTES elements are the base64 of the "
                f"file; or send them as binary data)"
            ) from None
    return items


def _from_binary(chunk: memoryview, datatype: str, count: int, where: str) -> np.ndarray | list[bytes]:
    if datatype == "FP32":
        if len(chunk) != 4 * count:
            raise ProtocolError(f"{where}: {len(chunk)} bytes of FP32 data, its shape needs {4 * count}")
        return np.frombuffer(chunk, dtype="<f4").astype(np.float32)  # a copy: the body is not kept
    items, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise ProtocolError(f"{where}: BYTES data end inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise ProtocolError(f"{where}: BYTES element {len(items)} claims {length} bytes past the data")
        items.append(bytes(chunk[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise ProtocolError(f"{where}: {len(items)} BYTES elements, its shape says {count}")
    return items


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("outputs must be a list")
    outputs = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"outputs[{index}] must be an object with a name (a string)")
        binary = _object(item.get("parameters"), f"outputs[{index}].parameters").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"outputs[{index}].parameters.binary_data must be true or false")
        outputs.append(RequestedOutput(item["name"], binary))
    return outputs


def encode_response(
    header: dict[str, Any], outputs: list[tuple[OutputTensor, bool]]
) -> tuple[bytes, int | None]:
    """The response body for `header` (model_name, model_version, id, parameters) and its outputs,
    each with whether it goes as binary data; and the JSON's length when binary data follow it."""
    described, chunks = [], []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        parameters = dict(tensor.parameters or {})
        if binary:
            chunk = _to_binary(tensor)
            parameters["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            value = tensor.value
            entry["data"] = value if isinstance(value, list) else value.reshape(-1).tolist()
        if parameters:
            entry["parameters"] = parameters
        described.append(entry)
    text = json.dumps({**header, "outputs": described}).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def _to_binary(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in (text.encode() for text in tensor.value))
    dtype = "<f4" if tensor.datatype == "FP32" else np.bool_
    return np.ascontiguousarray(tensor.value, dtype=dtype).tobytes()
