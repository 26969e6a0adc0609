"""The ingress layer's parts (service/ingress/): the door table covers every route that takes a body,
tickets charge and give back exactly, the body reader keeps its size, rate and memory rules, and the
shape an upload's header announces is the shape it decodes to. The layer against a real server, door by
door: tests/hostile/test_hostile_ingress.py."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from kdoct_testing.uploads import make_dicom
from service.app import create_app
from service.imaging import ImageLimits, ImageShape, decode_upload, probe_upload
from service.ingress.body import BodyLimits, MemoryShare, declared_length, read_body
from service.ingress.budget import MemoryBudget, RequestLimits, Ticket, image_cost
from service.ingress.doors import HttpDoors
from service.problems import Problem
from service.state import app_state

BODY_METHODS = {"POST", "PUT", "PATCH"}


def _routes(routes):
    """Every route, included routers walked into (FastAPI keeps them as `original_router`)."""
    for route in routes:
        router = getattr(route, "original_router", None)
        yield from _routes(router.routes) if router is not None else [route]


def test_every_route_that_takes_a_body_is_a_door(make_settings):
    """A new route with a body cannot skip the gate: its body would never be read."""
    app = create_app(make_settings())
    checked = 0
    for route in _routes(app.routes):
        for method in (getattr(route, "methods", None) or set()) & BODY_METHODS:
            concrete = (
                route.path.replace("{name}", "student")
                .replace("{version}", "1")
                .replace("{prediction_id}", "00000000-0000-0000-0000-000000000000")
            )
            assert HttpDoors.match(method, concrete) is not None, f"{method} {route.path} is no door"
            checked += 1
    assert checked >= 4  # /classify, both /v2 infer paths, feedback
    assert HttpDoors.match("POST", "/predictions") is None
    assert HttpDoors.match("GET", "/classify") is None


def _ticket(capacity: int = 1000, *, frames: int = 10, pixels: int = 10_000, per_frame: int = 0) -> Ticket:
    return Ticket(
        "test",
        "client",
        MemoryBudget(capacity),
        RequestLimits(max_frames=frames, max_pixels=pixels),
        input_bytes_per_frame=per_frame,
    )


def test_a_ticket_gives_back_everything_it_charged_once():
    ticket = _ticket()
    budget = ticket.budget
    ticket.charge_bytes(300, "a body")
    ticket.charge_bytes(200, "more")
    ticket.refund(50)
    assert budget.used == ticket.charged == 450
    closed = []
    ticket.on_close(lambda: closed.append(1))
    ticket.close()
    ticket.close()
    assert budget.used == 0 and closed == [1]
    with pytest.raises(RuntimeError):
        ticket.charge_bytes(1, "after the answer")
    assert budget.used == 0


def test_over_the_whole_budget_is_413_and_over_what_is_left_is_503():
    first, second = _ticket(), None
    first.charge_bytes(800, "a body")
    second = Ticket("test", "other", first.budget, first.limits)
    with pytest.raises(Problem) as left:
        second.charge_bytes(300, "a body")
    assert left.value.status == 503 and left.value.headers["Retry-After"] == "1"
    with pytest.raises(Problem) as whole:
        second.check_affordable(1001, "a body")
    assert whole.value.status == 413 and "KDOCT_MEMORY_BUDGET_BYTES" in whole.value.detail
    assert first.budget.used == 800  # refusals charge nothing
    first.close()
    second.charge_bytes(300, "a body")
    assert second.budget.used == 300


def test_images_are_counted_across_elements_before_they_are_charged():
    ticket = _ticket(capacity=1 << 30, frames=4, pixels=1000)
    ticket.charge_images([ImageShape(10, 10, 2)])
    with pytest.raises(Problem) as frames:
        ticket.charge_images([ImageShape(10, 10, 1), ImageShape(10, 10, 2)])
    assert frames.value.status == 413 and "5 frames" in frames.value.detail
    with pytest.raises(Problem) as pixels:
        ticket.charge_images([ImageShape(30, 30, 1)])
    assert pixels.value.status == 413 and "1100 pixels" in pixels.value.detail
    assert (ticket.frames, ticket.pixels) == (2, 200)  # refused elements are not counted


def test_image_cost_keeps_frames_converts_one_and_adds_the_inputs():
    shapes = [ImageShape(100, 50, 3), ImageShape(10, 10, 1)]
    assert image_cost(shapes, 7) == (15_000 + 100) * 4 + 5_000 * 8 + 4 * 7
    assert image_cost([], 7) == 0


def test_byte_counts_are_plain_ascii_digits():
    assert declared_length("1234", "Content-Length") == 1234
    assert declared_length(None, "Content-Length") is None
    for bad in ("²", "-1", "1e3", "12 34", "9" * 19):
        with pytest.raises(Problem) as refused:
            declared_length(bad, "Content-Length")
        assert refused.value.status == 400


def _receive(chunks: list[bytes], delays: list[float] | None = None):
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    pauses = iter(delays or [0.0] * len(messages))

    async def receive():
        await asyncio.sleep(next(pauses))
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def _read(chunks, *, limits: BodyLimits, share: MemoryShare, ticket: Ticket | None, delays=None):
    async def run():
        body = await read_body(
            _receive(chunks, delays), declared=None, limits=limits, share=share, ticket=ticket
        )
        replay = body.replay(_receive([]))
        received = []
        while True:
            message = await replay()
            received.append(message["body"])
            if not message["more_body"]:
                break
        return body, b"".join(received)

    return asyncio.run(run())


LIMITS = BodyLimits(max_bytes=1 << 20, what="(test)", read_timeout_s=0.3, min_rate=1000.0)


def test_a_body_past_the_in_memory_share_goes_to_a_file_and_is_charged_whole():
    share, ticket = MemoryShare(capacity=100), _ticket(capacity=1 << 20)
    chunks = [bytes([index]) * 60 for index in range(4)]
    body, replayed = _read(chunks, limits=LIMITS, share=share, ticket=ticket)
    assert replayed == b"".join(chunks)
    assert body.spilled is False  # replayed whole and closed: the file is gone
    assert share.used == 0  # the in-memory share came back
    assert ticket.charged == 240  # the complete body is the ticket's now


def test_a_body_over_the_cap_is_413_and_a_slow_one_408():
    with pytest.raises(Problem) as large:
        limits = BodyLimits(1000, "(test)", 1.0, 1e6)
        _read([bytes(600), bytes(600)], limits=limits, share=MemoryShare(1 << 20), ticket=None)
    assert large.value.status == 413
    # Every read within the 0.3 s timeout, but 1 byte per 0.2 s is under 1000 bytes/s after the grace.
    with pytest.raises(Problem) as slow:
        _read([b"x"] * 20, limits=LIMITS, share=MemoryShare(1 << 20), ticket=None, delays=[0.2] * 20)
    assert slow.value.status == 408 and "too slowly" in slow.value.detail


def test_the_shape_a_header_announces_is_the_shape_decoded():
    limits = ImageLimits()
    gray = Image.fromarray(np.arange(48 * 32, dtype=np.uint8).reshape(32, 48) % 255, mode="L")
    uploads = {"png": gray, "jpeg": gray, "tiff": gray, "bmp": gray.convert("RGB")}
    for fmt, image in uploads.items():
        buffer = io.BytesIO()
        image.save(buffer, format=fmt.upper())
        data = buffer.getvalue()
        assert probe_upload(data, limits) == ImageShape(48, 32, 1)
        decode_upload(data, limits, expected=ImageShape(48, 32, 1))
        with pytest.raises(Problem):
            decode_upload(data, limits, expected=ImageShape(48, 32, 2))
    for deflated in (False, True):
        volume = make_dicom([np.full((16, 24), index, np.uint16) for index in range(3)], deflated=deflated)
        assert probe_upload(volume, limits) == ImageShape(24, 16, 3)
        assert len(decode_upload(volume, limits, expected=ImageShape(24, 16, 3)).frames) == 3


def test_admission_and_budget_come_back_after_each_request(make_settings, jpeg_paths):
    with TestClient(create_app(make_settings(second_opinion="never"))) as client:
        gate = app_state(client.app).gate
        assert gate.input_bytes_per_frame > 0
        upload = {"file": ("scan.jpeg", jpeg_paths[0].read_bytes(), "image/jpeg")}
        response = client.post("/classify", files=upload)
        assert response.status_code == 200
        assert gate.budget.used == 0 and gate.admission.in_flight == 0
