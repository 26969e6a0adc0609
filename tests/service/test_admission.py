"""Admission before decode (service/admission.py): beyond the limit a classifying request is refused
with 503 + Retry-After before a byte of its body is read, and its slot comes back when it is answered."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.admission import Admission
from service.app import create_app
from service.ingress.body import MemoryShare
from service.ingress.budget import MemoryBudget, RequestLimits
from service.ingress.doors import HttpDoors
from service.ingress.gate import IngressGate
from service.middleware import BodyPolicy, RequestContextMiddleware
from service.state import app_state


def test_admitted_doors_are_the_classifying_ones():
    def admitted(path: str) -> bool:
        door = HttpDoors.match("POST", path)
        return door is not None and door.admitted

    assert admitted("/classify")
    assert admitted("/v2/models/student/infer")
    assert admitted("/v2/models/student/versions/1/infer")
    for path in ("/predictions/x/feedback", "/classify/x", "/v2/models/student", "/health/ready"):
        assert not admitted(path)


def test_admission_counts_up_to_its_limit():
    admission = Admission(2)
    assert admission.try_enter() and admission.try_enter()
    assert not admission.try_enter()
    admission.leave()
    assert admission.try_enter() and admission.in_flight == 2
    with pytest.raises(ValueError):
        Admission(0)


def _middleware(app, admission: Admission) -> RequestContextMiddleware:
    """The middleware as the service builds it, auth off, around `app`."""
    gate = IngressGate(admission, MemoryBudget(64 << 20), RequestLimits(max_frames=8, max_pixels=1 << 24))
    policy = BodyPolicy(max_upload_bytes=1024, read_timeout_s=5, min_rate=1024, max_json_bytes=1024)
    return RequestContextMiddleware(app, gate=gate, body=policy, share=MemoryShare(16 << 20))


def _scope(path: str) -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"3")]}


def test_a_refused_request_is_answered_without_its_body_being_read():
    async def scenario():
        inside, release = asyncio.Event(), asyncio.Event()

        async def app(scope, receive, send):
            await receive()
            if scope["path"] == "/classify":  # the admitted request holds its slot until released
                inside.set()
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        admission = Admission(1)
        middleware = _middleware(app, admission)
        reads = {"first": 0, "refused": 0, "feedback": 0}
        sent: dict[str, list[dict]] = {name: [] for name in reads}

        def channel(name):
            async def receive():
                reads[name] += 1
                return {"type": "http.request", "body": b"abc", "more_body": False}

            async def send(message):
                sent[name].append(message)

            return receive, send

        first = asyncio.create_task(middleware(_scope("/classify"), *channel("first")))
        await inside.wait()
        await middleware(_scope("/classify"), *channel("refused"))
        # Not a classifying route: needs no slot, so it is served while the only slot is held.
        await middleware(_scope("/predictions/x/feedback"), *channel("feedback"))
        release.set()
        await first
        return admission, reads, sent

    admission, reads, sent = asyncio.run(scenario())
    start, body = sent["refused"]
    headers = {name.decode(): value.decode() for name, value in start["headers"]}
    assert start["status"] == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    problem = json.loads(body["body"])
    assert problem["type"].endswith("/overloaded") and "full" in problem["detail"]
    assert reads == {"first": 1, "refused": 0, "feedback": 1}  # the refused body was never read
    assert sent["first"][0]["status"] == 200 and sent["feedback"][0]["status"] == 200
    assert admission.in_flight == 0  # the slot came back once the answer was sent


def test_overload_refuses_before_decoding(make_settings, jpeg_paths):
    """With max_queue 1, batch 1 and one decode thread (limit 3): three requests in flight (one
    running, two waiting), every other one refused without being decoded; the decode count proves it."""
    release = threading.Event()
    with TestClient(
        create_app(make_settings(max_queue=1, max_batch_size=1, second_opinion="never"))
    ) as client:
        state = app_state(client.app)
        pipeline = state.pipeline
        assert state.admission.limit == 3
        runtime = pipeline.classifier.student.batcher.runtime
        original_predict, original_decode = runtime.predict, pipeline.intake.decode
        decoded = []

        def blocked(batch):
            release.wait(30)
            return original_predict(batch)

        def counting(data, **options):
            decoded.append(len(data))
            return original_decode(data, **options)

        runtime.predict = blocked
        pipeline.intake.decode = counting
        refused_before = _queue_full(client)
        data = jpeg_paths[0].read_bytes()

        def post():
            return client.post("/classify", files={"file": ("scan.jpeg", data, "image/jpeg")})

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post) for _ in range(6)]
            # Three are refused while the runtime is blocked; then the three admitted ones are answered.
            while sum(f.done() for f in futures) < 3:
                threading.Event().wait(0.02)
            release.set()
            responses = [f.result(timeout=30) for f in futures]
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 503, 503, 503]
        assert len(decoded) == 3  # the refused three were never decoded
        for refused in (r for r in responses if r.status_code == 503):
            assert refused.headers["Retry-After"] == "1"
        assert state.admission.in_flight == 0
        assert _queue_full(client) == refused_before + 3


def _queue_full(client: TestClient) -> float:
    """kdoct_rejected_requests_total{reason="queue_full"} (the registry is shared by the whole session)."""
    series = 'kdoct_rejected_requests_total{reason="queue_full"} '
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(series))
    return float(line.removeprefix(series))


def test_a_slot_given_back_goes_to_the_first_request_waiting():
    async def scenario():
        admission = Admission(1, wait_s=5.0)
        assert await admission.enter()
        order = []

        async def waiter(name):
            entered = await admission.enter()
            order.append((name, entered))
            if entered:
                admission.leave()

        first = asyncio.create_task(waiter("first"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(waiter("second"))
        await asyncio.sleep(0.01)
        assert admission.waiting == 2 and not admission.try_enter()  # nobody overtakes the waiters
        admission.leave()
        await asyncio.gather(first, second)
        return admission, order

    admission, order = asyncio.run(scenario())
    assert order == [("first", True), ("second", True)]
    assert admission.in_flight == 0 and admission.waiting == 0


def test_a_wait_ends_after_wait_s_and_a_full_waiting_room_refuses_at_once():
    async def scenario():
        admission = Admission(1, wait_s=0.2)
        assert await admission.enter()
        loop = asyncio.get_running_loop()
        began = loop.time()
        waited = await admission.enter()
        elapsed = loop.time() - began
        # Fill the waiting room (4 per slot); the next is refused without waiting.
        room = [asyncio.create_task(admission.enter()) for _ in range(4)]
        await asyncio.sleep(0.01)
        began = loop.time()
        refused_at_once = await admission.enter()
        at_once = loop.time() - began
        results = await asyncio.gather(*room)
        return admission, waited, elapsed, refused_at_once, at_once, results

    admission, waited, elapsed, refused_at_once, at_once, results = asyncio.run(scenario())
    assert waited is False and 0.15 < elapsed < 2.0
    assert refused_at_once is False and at_once < 0.1
    assert results == [False] * 4
    assert admission.in_flight == 1 and admission.waiting == 0
