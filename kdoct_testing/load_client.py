"""A minimal HTTP/1.1 load client on asyncio streams.

The client shares the 2-core machine with the server, so it must cost little: requests are built
once as bytes (multipart body included) and each connection only writes them and parses the status
line, the headers and a Content-Length body. Two drivers: `closed_loop` (N connections, each sends
its next request when the previous one is answered) and `open_loop` (sends scheduled at a fixed
rate, latency measured from the scheduled time, so a slow server cannot slow the arrivals down:
no coordinated omission).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "LoadResult",
    "build_classify_requests",
    "closed_loop",
    "closed_loop_threads",
    "open_loop",
    "percentile",
]


def build_classify_requests(
    paths: list[Path], host: str, port: int, api_key: str | None = None
) -> list[bytes]:
    """One complete POST /classify request (head and multipart body) per image."""
    requests = []
    for path in paths:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="scan.jpeg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = [
            "POST /classify HTTP/1.1",
            f"Host: {host}:{port}",
            f"Content-Type: multipart/form-data; boundary={boundary}",
            f"Content-Length: {len(body)}",
        ]
        if api_key:
            head.append(f"Authorization: Bearer {api_key}")
        requests.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return requests


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(payload)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class LoadResult:
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # of 2xx answers only
    statuses: Counter = field(default_factory=Counter)  # "200", "503", "error: ConnectionResetError"
    shed_latencies_ms: list[float] = field(default_factory=list)  # of 503 answers
    retry_after_missing: int = 0
    sent: int = 0

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if status.startswith("2"))

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def median(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def _note(result: LoadResult, status: int, headers: dict[str, str], latency_ms: float) -> None:
    result.statuses[str(status)] += 1
    if 200 <= status < 300:
        result.latencies_ms.append(latency_ms)
    elif status == 503:
        result.shed_latencies_ms.append(latency_ms)
        if "retry-after" not in headers:
            result.retry_after_missing += 1


async def closed_loop(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    honour_retry_after: bool = False,
) -> LoadResult:
    """`concurrency` connections send back to back for warmup + duration; only the last part counts.
    `honour_retry_after`: a client answered 503 first waits the Retry-After it was given."""
    began = time.perf_counter()
    measure_from = began + warmup_s
    stop_at = measure_from + duration_s
    result = LoadResult(duration_s=duration_s)

    async def worker(index: int) -> None:
        connection = Connection(host, port)
        position = index
        while (now := time.perf_counter()) < stop_at:
            payload = requests[position % len(requests)]
            position += concurrency
            try:
                status, headers, _ = await connection.request(payload)
            except (OSError, asyncio.IncompleteReadError) as exc:
                if time.perf_counter() >= measure_from:
                    result.statuses[f"error: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            finished = time.perf_counter()
            # Counted by completion time: a level whose latency exceeds the window still counts.
            if measure_from <= finished <= stop_at:
                result.sent += 1
                _note(result, status, headers, (finished - now) * 1000)
            if honour_retry_after and status == 503:
                await asyncio.sleep(min(float(headers.get("retry-after", "1")), stop_at - finished))
        connection.close()

    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return result


class BlockingConnection:
    """The same request/response exchange on a plain blocking socket: no event loop, no transport
    objects, so a sender thread costs only the system calls (the client shares the server's cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = b""

    def request(self, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        try:
            self.sock.sendall(payload)
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                self._fill()
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            self.buffer = self.buffer[end + 4 :]
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                self._fill()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def closed_loop_threads(
    host: str, port: int, requests: list[bytes], *, concurrency: int, duration_s: float, warmup_s: float = 1.0
) -> LoadResult:
    """`closed_loop` with one thread and blocking socket per connection: the leanest client for the
    comparison with the bare model (threads wait in recv() with the GIL released)."""
    began = time.perf_counter()
    measure_from = began + warmup_s
    stop_at = measure_from + duration_s
    result = LoadResult(duration_s=duration_s)
    lock = threading.Lock()

    def worker(index: int) -> None:
        connection = BlockingConnection(host, port)
        position = index
        while (now := time.perf_counter()) < stop_at:
            payload = requests[position % len(requests)]
            position += concurrency
            try:
                status, headers, _ = connection.request(payload)
            except OSError as exc:
                if time.perf_counter() >= measure_from:
                    with lock:
                        result.statuses[f"error: {type(exc).__name__}"] += 1
                time.sleep(0.01)
                continue
            finished = time.perf_counter()
            if measure_from <= finished <= stop_at:
                with lock:
                    result.sent += 1
                    _note(result, status, headers, (finished - now) * 1000)
        connection.close()

    threads = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


async def open_loop(
    host: str, port: int, requests: list[bytes], *, rate: float, duration_s: float, max_connections: int = 512
) -> LoadResult:
    """Requests at a fixed `rate` per second for `duration_s`; each on a pooled keep-alive connection
    (a new one when all are busy). Latency counts from the scheduled send time."""
    result = LoadResult(duration_s=duration_s)
    idle: list[Connection] = []
    open_count = 0
    tasks = set()
    start = time.perf_counter() + 0.05
    total = int(rate * duration_s)

    async def one(index: int, scheduled: float) -> None:
        nonlocal open_count
        if idle:
            connection = idle.pop()
        elif open_count < max_connections:
            open_count += 1
            connection = Connection(host, port)
        else:
            result.statuses["error: client connection limit"] += 1
            return
        try:
            status, headers, _ = await connection.request(requests[index % len(requests)])
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.statuses[f"error: {type(exc).__name__}"] += 1
            open_count -= 1
            return
        _note(result, status, headers, (time.perf_counter() - scheduled) * 1000)
        if connection.writer is not None:
            idle.append(connection)
        else:
            open_count -= 1

    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        result.sent += 1
        task = asyncio.create_task(one(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    for connection in idle:
        connection.close()
    return result
