"""The service's ways in, as a client drives them, for the hostile ingress suite
(tests/hostile/test_hostile_ingress.py): every case that concerns all ways in runs against every door here.

A door adapter has a `name`, `max_elements` (uploads one request can carry), and two verbs:
`send(port, uploads, key)` -> (status, raw answer) sends a whole request and waits for its answer;
`hold(port, uploads, key)` -> HeldRequest opens one and sends almost nothing of its body. Statuses are
HTTP's; a door on another transport (the DICOM node: an association and a C-STORE) maps its own
outcome onto them (accepted 200, refused for scope 403, for load 503/429, for size 413). A new way in
adds its adapter to `doors`."""

from __future__ import annotations

import base64
import io
import json
import re
import select
import socket
import struct
import time
import uuid
from dataclasses import dataclass

__all__ = [
    "ClassifyDoor",
    "DicomDoor",
    "HeldRequest",
    "HttpDoor",
    "RawRequest",
    "V2Door",
    "doors",
    "send",
]

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def head(self, port: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        headers = {"Content-Length": str(len(self.body)), **self.headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpDoor:
    """The verbs of an HTTP door, from the request it builds."""

    def request(self, uploads: list[bytes], key: str | None) -> RawRequest:
        raise NotImplementedError

    def send(self, port: int, uploads: list[bytes], key: str | None, timeout: float = 60.0):
        return send(port, self.request(uploads, key), timeout)

    def hold(self, port: int, uploads: list[bytes], key: str | None, sent: int = 1) -> HeldRequest:
        return HeldRequest(port, self.request(uploads, key), sent)


class ClassifyDoor(HttpDoor):
    """POST /classify: one upload per request (multipart/form-data)."""

    name = "classify"
    max_elements = 1

    def request(self, uploads: list[bytes], key: str | None) -> RawRequest:
        if len(uploads) != 1:
            raise ValueError("POST /classify takes one upload per request")
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="scan"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + uploads[0]
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return RawRequest("POST", "/classify", _auth(key, headers), body)


class V2Door(HttpDoor):
    """POST /v2/models/<model>/infer with a BYTES input: binary tensor data, or base64 in JSON."""

    max_elements = 256

    def __init__(self, model: str, *, binary: bool) -> None:
        self.model = model
        self.binary = binary
        self.name = "v2-binary" if binary else "v2-json"

    def request(self, uploads: list[bytes], key: str | None) -> RawRequest:
        path = f"/v2/models/{self.model}/infer"
        tensor: dict = {"name": "image", "datatype": "BYTES", "shape": [len(uploads)]}
        if not self.binary:
            tensor["data"] = [base64.b64encode(upload).decode() for upload in uploads]
            body = json.dumps({"inputs": [tensor]}).encode()
            return RawRequest("POST", path, _auth(key, {"Content-Type": "application/json"}), body)
        data = b"".join(struct.pack("<I", len(upload)) + upload for upload in uploads)
        tensor["parameters"] = {"binary_data_size": len(data)}
        header = json.dumps({"inputs": [tensor]}).encode()
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
        return RawRequest("POST", path, _auth(key, headers), header + data)


class DicomDoor:
    """The DICOM node's C-STORE (service/dicom_node/): one association per request, each upload one
    instance; `key` is the calling AE title. Its outcome as HTTP's: the association rejected 403 (a
    caller not on the list), status 0x0000 200, 0xA700 503 (busy now), 0xA710 413 (too large), 0xA900
    415, 0xC000 422, any other failure 500. `port` is the node's DICOM port. No `hold`: a held
    association is ended by the node's network timeout, not by the body's rate rules."""

    name = "dicom"
    max_elements = 64
    STATUSES = {0x0000: 200, 0xA700: 503, 0xA710: 413, 0xA900: 415, 0xC000: 422}

    def send(self, port: int, uploads: list[bytes], key: str | None, timeout: float = 60.0):
        from kdoct_testing.dicom_node import c_store

        outcome = c_store(port, uploads, calling_ae=key or "TESTPACS")
        if outcome == "rejected":
            return 403, b""
        if outcome == "aborted":
            return 0, b""
        statuses = [self.STATUSES.get(status, 500) for status in outcome]
        worst = max(statuses)  # the request's status: its worst element's, as one HTTP answer would be
        return worst, json.dumps(statuses).encode()


def doors(model: str) -> list[HttpDoor | DicomDoor]:
    """Every way in of a service whose student is `model` (the DICOM node's is its own process)."""
    return [ClassifyDoor(), V2Door(model, binary=True), V2Door(model, binary=False), DicomDoor()]


def _auth(key: str | None, headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Authorization": f"Bearer {key}"} if key else headers


def _read_response(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Status and whatever of the response arrived until the server closed or `timeout` passed."""
    sock.settimeout(timeout)
    buffer = io.BytesIO()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        buffer.write(chunk)
        data = buffer.getvalue()
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            length = re.search(rb"(?i)content-length: *(\d+)", data[:head_end])
            if length and len(data) >= head_end + 4 + int(length.group(1)):
                break
    data = buffer.getvalue()
    match = _STATUS_LINE.match(data)
    return (int(match.group(1)) if match else 0), data


def send(port: int, request: RawRequest, timeout: float = 60.0) -> tuple[int, bytes]:
    """Send the whole request on a new connection; (status, raw response). The body is sent in pieces
    and sending stops as soon as the server answers (it may answer before reading the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request.head(port))
        view, sent = memoryview(request.body), 0
        while sent < len(view):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sent += sock.send(view[sent : sent + (1 << 20)])
            except (BrokenPipeError, ConnectionResetError):
                break
        return _read_response(sock, timeout)


class HeldRequest:
    """A request whose head and first `sent` body bytes went out, the rest withheld: what a slow or
    hostile sender leaves open. `answer` waits for what the server said, if anything."""

    def __init__(self, port: int, request: RawRequest, sent: int = 1) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(request.head(port) + request.body[:sent])
        self.opened = time.monotonic()

    def answered(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def answer(self, timeout: float) -> int:
        """The status the server answered within `timeout`; 0 when none came."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return 0
        return _read_response(self.sock, 5.0)[0]

    def trickle(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()
