"""The threaded keep-alive load client (kdoct_testing.load_client, which the benchmarks drive the service
with) against a real HTTP/1.1 server."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kdoct_testing.load_client import BlockingConnection, closed_loop_threads


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - the http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 503 if body == b"busy" else 200
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _post(body: bytes, port: int) -> bytes:
    head = f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_one_keep_alive_connection_answers_requests_in_turn(echo_port):
    connection = BlockingConnection("127.0.0.1", echo_port)
    for body in (b"a" * 100_000, b"second", b""):
        status, headers, answer = connection.request(_post(body, echo_port))
        assert (status, answer) == (200, body)
    connection.close()


def test_closed_loop_counts_answers_by_status(echo_port):
    requests = [_post(b"scan", echo_port), _post(b"busy", echo_port)]
    result = closed_loop_threads(
        "127.0.0.1", echo_port, requests, concurrency=2, duration_s=0.3, warmup_s=0.05
    )
    assert result.statuses["200"] > 0 and result.statuses["503"] > 0
    assert result.retry_after_missing == 0
    assert result.throughput > 0 and len(result.latencies_ms) == result.statuses["200"]
