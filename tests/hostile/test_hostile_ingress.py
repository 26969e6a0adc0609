"""Every door has the same locks (service/ingress/): each case runs against a real uvicorn server, and
the cases that concern all ways in run against every door (kdoct_testing/ingress.py: a new way in adds
its adapter there). Bounds are wide on purpose: they catch the failures reported in issue 23 (minutes
of a frozen event loop, gigabytes of RSS, slots held by keys that may not classify), not noise."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from corpus import _png_bomb, deflated_dicom

from kdoct_testing.ingress import ClassifyDoor, HeldRequest, RawRequest, doors, send

RSS_GROWTH_LIMIT = 300 << 20
DOOR_NAMES = ["classify", "v2-binary", "v2-json"]
MULTI_ELEMENT_DOORS = ["v2-binary", "v2-json"]


def _door(server, name: str):
    return next(door for door in doors(server.model) if door.name == name)


@pytest.fixture(scope="module")
def scan(sample_jpegs) -> bytes:
    return sample_jpegs["NORMAL"][0].read_bytes()


class LivenessProbe:
    """Polls /health/live every 0.1 s in a thread; `worst` is the slowest answer while it ran."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.get(f"{self.url}/health/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.worst = max(self.worst, time.monotonic() - started)
                self.failures += not ok
                self._stop.wait(0.1)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def _grows_rss_by(server, action) -> tuple[int, object]:
    """Peak RSS growth of the server while `action` runs, and what it returned."""
    baseline = server.rss()
    server.reset_peak()
    result = action()
    return server.peak() - baseline, result


def _problem(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1] or b"{}")


# Every door ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("door_name", DOOR_NAMES)
def test_held_uploads_by_a_key_without_the_scope_take_no_slot(ingress_server, scan, door_name):
    """Case 4: 300 uploads held open (one body byte sent) by a key with only the feedback scope are
    refused 403 before their body is read, and take no admission slot: 10 of 10 legitimate uploads are
    answered meanwhile."""
    door, port = _door(ingress_server, door_name), ingress_server.port
    held = [door.hold(port, [scan], ingress_server.keys.feedback) for _ in range(300)]
    try:
        legitimate = [door.send(port, [scan], ingress_server.keys.clinic)[0] for _ in range(10)]
        assert legitimate == [200] * 10
        statuses = [request.answer(timeout=10) for request in held]
        assert statuses == [403] * 300
    finally:
        for request in held:
            request.close()


@pytest.mark.slow
@pytest.mark.parametrize("door_name", DOOR_NAMES)
def test_a_trickled_body_is_cut_off_and_one_key_cannot_hold_every_slot(ingress_server, scan, door_name):
    """Case 4 with a key that may classify: beyond its in-flight cap its requests get 429 at once; those
    it holds are cut off (408) once the grace has passed without the minimum rate; another key's
    uploads are answered all along."""
    door, port, keys = _door(ingress_server, door_name), ingress_server.port, ingress_server.keys
    held = [door.hold(port, [scan], keys.clinic) for _ in range(12)]
    try:
        time.sleep(0.5)
        refused_at_once = [request for request in held if request.answered()]
        assert refused_at_once, "no request of the key was refused: it holds every slot"
        assert {request.answer(timeout=1) for request in refused_at_once} == {429}
        others = [door.send(port, [scan], keys.other)[0] for _ in range(5)]
        assert others == [200] * 5
        waiting = [request for request in held if request not in refused_at_once]
        for request in waiting:  # a byte now and then: each read is in time, the rate is not
            request.trickle(b"-")
        deadline = ingress_server.body_read_timeout_s + 10
        assert {request.answer(timeout=deadline) for request in waiting} == {408}
        assert time.monotonic() - held[0].opened < deadline + 5
        assert door.send(port, [scan], keys.clinic)[0] == 200  # its slots came back
    finally:
        for request in held:
            request.close()


@pytest.mark.slow
@pytest.mark.parametrize("door_name", DOOR_NAMES)
def test_a_request_over_the_memory_budget_is_refused_before_decoding(ingress_server, door_name):
    """One deflated 16-bit volume of 256 frames of 512x1024 (a few hundred kB, 134M pixels: within the
    per-request pixel and frame limits) would decode to over 500 MiB, more than the whole budget:
    413 from its header, RSS unmoved."""
    volume = deflated_dicom(np.zeros((256, 512, 1024), dtype=np.uint16))
    door = _door(ingress_server, door_name)
    growth, (status, raw) = _grows_rss_by(
        ingress_server, lambda: door.send(ingress_server.port, [volume], ingress_server.keys.clinic)
    )
    assert status == 413, raw[-500:]
    assert b"KDOCT_MEMORY_BUDGET_BYTES" in raw
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"


# Doors that carry several uploads per request ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("door_name", MULTI_ELEMENT_DOORS)
def test_bomb_pngs_are_counted_across_the_elements_of_a_request(ingress_server, door_name):
    """Case 2: 32 PNGs of 4000x4000 zeros in one request, each within the per-image limit, together
    512M pixels: 413 before any is decoded, RSS growth < 300 MiB."""
    bomb = _png_bomb(4000, 4000)
    door = _door(ingress_server, door_name)
    with LivenessProbe(ingress_server.url) as probe:
        growth, (status, raw) = _grows_rss_by(
            ingress_server,
            lambda: door.send(ingress_server.port, [bomb] * 32, ingress_server.keys.clinic),
        )
    assert status == 413, raw[-500:]
    assert b"per request" in raw
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"
    assert probe.worst < 2.0 and probe.failures == 0


@pytest.mark.slow
@pytest.mark.parametrize("door_name", MULTI_ELEMENT_DOORS)
def test_frames_are_counted_across_the_elements_of_a_request(ingress_server, door_name):
    """Case 2: three deflated 16-bit volumes of 256 frames each (each alone within the limits) are 768
    frames in one request: 413, nothing queued."""
    volume = deflated_dicom(np.zeros((256, 64, 128), dtype=np.uint16))
    door = _door(ingress_server, door_name)
    growth, (status, raw) = _grows_rss_by(
        ingress_server,
        lambda: door.send(ingress_server.port, [volume] * 3, ingress_server.keys.clinic),
    )
    assert status == 413, raw[-500:]
    assert b"768 frames" in raw
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"


# The Open Inference Protocol's JSON --------------------------------------------------------------


def _v2_json(server, document: bytes | str, headers: dict[str, str] | None = None) -> RawRequest:
    body = document.encode() if isinstance(document, str) else document
    return RawRequest(
        "POST",
        f"/v2/models/{server.model}/infer",
        {"Content-Type": "application/json", "Authorization": f"Bearer {server.keys.clinic}"}
        | (headers or {}),
        body,
    )


@pytest.mark.slow
def test_a_shape_bomb_is_a_4xx_within_seconds_and_the_loop_keeps_answering(ingress_server):
    """Case 1: a 1 MB JSON body whose shape has 500,000 dimensions froze the worker for minutes."""
    dims = ",".join(["9"] * 500_000)
    document = f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[{dims}],"data":[]}}]}}'
    assert len(document) > 1_000_000
    with LivenessProbe(ingress_server.url) as probe:
        started = time.monotonic()
        status, raw = send(ingress_server.port, _v2_json(ingress_server, document), timeout=60)
        elapsed = time.monotonic() - started
    assert status == 400, raw[-500:]
    assert b"dimensions" in raw
    assert elapsed < 5.0, f"answered after {elapsed:.1f} s"
    assert probe.worst < 2.0 and probe.failures == 0, f"/health/live took {probe.worst:.1f} s"


@pytest.mark.slow
def test_a_json_part_over_its_cap_is_refused_before_it_is_read(ingress_server):
    """Case 7: a 63 MiB JSON tensor took +928 MiB and stalled the loop 8.4 s before its N was checked."""
    document = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":[' + b"0.5," * (16 << 20)
    document = document[:-1] + b"]}]}"
    with LivenessProbe(ingress_server.url) as probe:
        started = time.monotonic()
        growth, (status, raw) = _grows_rss_by(
            ingress_server, lambda: send(ingress_server.port, _v2_json(ingress_server, document))
        )
        elapsed = time.monotonic() - started
    assert status == 413, raw[-500:]
    assert b"KDOCT_MAX_JSON_BYTES" in raw
    assert elapsed < 5.0 and growth < RSS_GROWTH_LIMIT, (elapsed, growth >> 20)
    assert probe.worst < 2.0
    # Declared in the header, the JSON part is refused the same way.
    status, raw = send(
        ingress_server.port,
        _v2_json(ingress_server, b"{}" + bytes(100), {"Inference-Header-Content-Length": str(64 << 20)}),
    )
    assert status == 413 and b"KDOCT_MAX_JSON_BYTES" in raw


@pytest.mark.parametrize(
    ("name", "document", "headers", "expected"),
    [
        ("5,000-digit integer", '{"inputs":[], "id": 1' + "0" * 5000 + "}", None, "digits"),
        (
            "datatype of the wrong type",
            '{"inputs":[{"name":"input","datatype":["FP32"],"shape":[1,3,8,8],"data":[]}]}',
            None,
            "datatype",
        ),
        (
            "superscript digit as a byte count",
            '{"inputs":[]}',
            {"Inference-Header-Content-Length": "²"},
            "Inference-Header-Content-Length",
        ),
        ("binary data size of 5,000 digits", '{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],'
         '"parameters":{"binary_data_size":' + "9" * 5000 + "}}]}", None, "digits"),
    ],
)  # fmt: skip
def test_unbounded_numbers_and_wrong_types_are_400s(ingress_server, name, document, headers, expected):
    """Case 12: each of these was a 500."""
    status, raw = send(ingress_server.port, _v2_json(ingress_server, document, headers))
    assert status == 400, (name, raw[-500:])
    assert expected.encode() in raw, (name, raw[-500:])


# A body no route takes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_body_for_no_door_is_never_read(ingress_server):
    """Case 6: 24 bodies of 58 MiB to POST /predictions (no such door), last byte withheld, held
    1.4 GiB for as long as the senders wished. Now each is answered (405) before its body is read."""
    size = 58 << 20
    body = bytes(size)
    request = RawRequest(
        "POST",
        "/predictions",
        {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {ingress_server.keys.reader}"},
        body,
    )

    def hold_all():
        held = [HeldRequest(ingress_server.port, request, sent=0) for _ in range(24)]
        try:
            for each in held:
                each.trickle(body[: 8 << 20])  # as much as the connection takes before the answer
            return [each.answer(timeout=10) for each in held]
        finally:
            for each in held:
                each.close()

    growth, statuses = _grows_rss_by(ingress_server, hold_all)
    assert statuses == [405] * 24
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"


@pytest.mark.slow
def test_bodies_for_the_model_change_doors_are_never_read(ingress_server):
    """The promotion and rollback doors (docs/LIFECYCLE.md) take no body: 58 MiB bodies sent there,
    last byte withheld, without a key, with a key lacking the admin scope and with an admin key, are
    answered 401, 403 and 413 from their headers, and holding 18 of them grows nothing."""
    size = 58 << 20
    body = bytes(size)
    paths = ("/models/rollback", f"/models/candidates/{'0' * 64}/promote")
    cases = [(None, 401), (ingress_server.keys.clinic, 403), (ingress_server.keys.admin, 413)]

    def hold_all():
        held = []
        for key, _ in cases:
            headers = {"Content-Type": "application/json"} | (
                {"Authorization": f"Bearer {key}"} if key else {}
            )
            for path in paths:
                for _ in range(3):
                    held.append(
                        HeldRequest(ingress_server.port, RawRequest("POST", path, headers, body), sent=0)
                    )
        try:
            for each in held:
                each.trickle(body[: 8 << 20])
            return [each.answer(timeout=10) for each in held]
        finally:
            for each in held:
                each.close()

    growth, statuses = _grows_rss_by(ingress_server, hold_all)
    assert statuses == [status for _, status in cases for _ in range(len(paths) * 3)]
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"


# Large legal bodies ------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_large_uploads_stay_within_the_memory_budget(ingress_server, scan):
    """Case 6: 16 concurrent legal uploads of 58 MiB (a real B-scan and trailing bytes the JPEG decoder
    ignores) took +2,769 MiB. Bodies arriving beyond the in-memory share go to disk and complete ones
    are charged to the budget: each is answered 200, 503 (the budget is taken) or 429 (the key's
    in-flight cap), and RSS stays bounded."""
    upload = scan + bytes((58 << 20) - len(scan))
    door, key = ClassifyDoor(), ingress_server.keys.clinic

    def all_at_once():
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda _: door.send(ingress_server.port, [upload], key)[0], range(16)))

    growth, statuses = _grows_rss_by(ingress_server, all_at_once)
    assert set(statuses) <= {200, 429, 503} and 200 in statuses, statuses
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"


def test_the_ingress_layer_is_on_the_metrics(ingress_server):
    text = httpx.get(f"{ingress_server.url}/metrics", timeout=10).text
    assert "kdoct_ingress_memory_bytes" in text
    assert 'kdoct_rejected_requests_total{reason="key_in_flight"}' in text
