"""The Open Inference Protocol codec alone: nested JSON data, binary BYTES elements, and responses
that the real tritonclient parses back to the same tensors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.http import InferResult

from service.api.oip_codec import OutputTensor, ProtocolError, encode_response, parse_request


def test_nested_json_data_is_read_row_major():
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3.5, 4]]}]}
    parsed = parse_request(json.dumps(body).encode(), None)
    np.testing.assert_array_equal(parsed.inputs[0].value, np.array([[1, 2], [3.5, 4]], np.float32))


def test_binary_bytes_elements_are_length_prefixed():
    elements = [b"\x89PNG first", b"", b"\xff\xd8 third"]
    chunk = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(chunk)},
                }
            ]
        }
    ).encode()
    parsed = parse_request(header + chunk, str(len(header)))
    assert parsed.inputs[0].value == elements
    # The last element claims one byte more than the data hold.
    overrun = chunk[: -len(elements[-1]) - 4] + struct.pack("<I", len(elements[-1]) + 1) + elements[-1]
    with pytest.raises(ProtocolError, match="past the data"):
        parse_request(header + overrun, str(len(header)))


@pytest.mark.parametrize("body", [b"[[[[" * 50_000, b'{"inputs": []}', b'{"inputs": [{"name": "x"}]}'])
def test_malformed_requests_raise_protocol_error(body):
    with pytest.raises(ProtocolError):
        parse_request(body, None)


@pytest.mark.parametrize("binary", [False, True])
def test_responses_parse_back_in_tritonclient(binary):
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
    tensors = [
        OutputTensor("probabilities", "FP32", probabilities),
        OutputTensor("label", "BYTES", ["cnv", "normal"]),
        OutputTensor("refer", "BOOL", np.array([True, False])),
    ]
    body, length = encode_response({"model_name": "m", "model_version": "1"}, [(t, binary) for t in tensors])
    assert (length is not None) == binary
    result = InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")] == ["cnv", "normal"]
    assert result.as_numpy("refer").tolist() == [True, False]
