"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

RequestContextMiddleware gives every request an id (the client's X-Request-ID when it is sane, else
a new one), echoes it, and observes kdoct_request_duration_seconds by route template. It is also the
HTTP adapter of the ingress layer (service/ingress/): a request with a body is matched to its door,
and before a byte of the body is read its key is checked for the door's scope (401/403), the gate
takes the key's in-flight count and, for doors that decode and infer, an admission slot (429/503); the
body is then read within its size, time and memory budgets (413/408/503) and charged to the request's
Ticket, which the app finds in `request.state.ticket` and which is closed once the answer has gone out.
A body-bearing request that matches no door is answered by the app (404/405) without its body being read.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import prometheus
from service.ingress.body import Body, BodyLimits, MemoryShare, declared_length, read_body
from service.ingress.budget import Ticket
from service.ingress.doors import Door, HttpDoors
from service.ingress.gate import OVERLOAD_PACING_S, IngressGate
from service.problems import Problem, problem_response
from service.security import ANONYMOUS, Client

__all__ = ["INFERENCE_HEADER_LENGTH", "REQUEST_ID_HEADER", "BodyPolicy", "RequestContextMiddleware"]

# Refusals for lack of room are paced (service/ingress/gate.py); the memory budget's refusal of a body
# is paced here the same way.
_PACED_REASONS = {"memory_budget"}

REQUEST_ID_HEADER = "X-Request-ID"
# The Open Inference Protocol's header: the length of the JSON part of a body with binary tensor data.
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
# Client ids end up in logs and records: only short, plain ones are echoed (no log injection).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}

# (bearer token, the door's scope, the caller's address: its failures are counted, 429 beyond a limit)
Authenticate = Callable[[str | None, str, str | None], Awaitable[Client]]


@dataclass(frozen=True)
class BodyPolicy:
    max_upload_bytes: int
    read_timeout_s: float
    min_rate: float  # bytes/s after the grace of read_timeout_s
    max_json_bytes: int  # the JSON part of a door's body that is parsed whole (the /v2 request)

    def limits(self, door: Door, headers: Headers) -> BodyLimits:
        """The door's body limits; a JSON part over max_json_bytes is refused from its headers."""
        if door.max_body_bytes is not None:
            return self._limits(door.max_body_bytes, "for this route")
        if door.json_part:
            json_length = declared_length(headers.get(INFERENCE_HEADER_LENGTH), INFERENCE_HEADER_LENGTH)
            if json_length is None:  # the whole body is JSON
                if self.max_json_bytes < self.max_upload_bytes:
                    return self._limits(self.max_json_bytes, _JSON_LIMIT)
            elif json_length > self.max_json_bytes:
                raise Problem(
                    "payload-too-large",
                    f"the JSON part of the request ({INFERENCE_HEADER_LENGTH}: {json_length}) exceeds "
                    f"{self.max_json_bytes} bytes {_JSON_LIMIT}",
                    reason="too_large",
                )
        return self._limits(self.max_upload_bytes, "(KDOCT_MAX_UPLOAD_BYTES)")

    def _limits(self, max_bytes: int, what: str) -> BodyLimits:
        return BodyLimits(max_bytes, what, self.read_timeout_s, self.min_rate)


_JSON_LIMIT = "(KDOCT_MAX_JSON_BYTES): send tensors and images as binary data (binary tensor data extension)"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        gate: IngressGate,
        body: BodyPolicy,
        share: MemoryShare,
        known_paths: Collection[str] = (),
        authenticate: Authenticate | None = None,
    ) -> None:
        self.app = app
        self.gate = gate
        self.body = body
        self.share = share
        self.known_paths = set(known_paths)
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        offered = headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = started
        status = 500
        close_connection = False

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers.append(REQUEST_ID_HEADER, request_id)
                # Answers are about patients: no cache (browser, proxy) may keep them, and no browser may
                # sniff them into another type. The page's static assets may be cached.
                if not scope["path"].startswith("/static/"):
                    response_headers["Cache-Control"] = "no-store"
                response_headers["X-Content-Type-Options"] = "nosniff"
                if close_connection:  # a body left unread is not drained: the connection goes
                    response_headers["Connection"] = "close"
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        ticket: Ticket | None = None
        body: Body | None = None
        try:
            if method in _BODY_METHODS:
                door = HttpDoors.match(method, scope["path"])
                if door is None:
                    close_connection = True
                    receive = _body_never_read
                else:
                    try:
                        ticket = await self._enter(door, scope, headers)
                        state["ticket"] = ticket
                        limits = self.body.limits(door, headers)
                        body = await read_body(
                            receive,
                            declared=declared_length(headers.get("content-length"), "Content-Length"),
                            limits=limits,
                            share=self.share,
                            ticket=ticket,
                        )
                    except Problem as problem:
                        await self._refuse(scope, receive, send_with_id, problem, request_id)
                        return
                    if body is None:
                        return  # the client went away
                    receive = body.replay(receive)
            await self.app(scope, receive, send_with_id)
        finally:
            if body is not None:
                body.close()
            if ticket is not None:
                ticket.close()
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.known_paths else "unmatched"
            )
            prometheus.REQUEST_DURATION.labels(route=template, method=method, status=str(status)).observe(
                time.perf_counter() - started
            )

    async def _enter(self, door: Door, scope: Scope, headers: Headers) -> Ticket:
        """Key and scope (401/403), then the gate (429/503): nothing of the body is read before."""
        client = ANONYMOUS
        if self.authenticate is not None:
            authorization = headers.get("authorization", "")
            scheme, _, token = authorization.partition(" ")
            bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
            peer = scope.get("client")
            client = await self.authenticate(bearer, door.scope, peer[0] if peer else None)
        return await self.gate.enter(door, client)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, problem: Problem, request_id: str
    ) -> None:
        """Answered with the body unread (or not all read): the connection is closed, not drained."""
        if problem.reason:
            prometheus.REJECTED_REQUESTS.labels(reason=problem.reason).inc()
        response = problem_response(
            problem.slug,
            problem.detail,
            status=problem.status,
            request_id=request_id,
            instance=scope["path"],
            headers={**problem.headers, "Connection": "close"},
        )
        if problem.reason in _PACED_REASONS:
            await asyncio.sleep(OVERLOAD_PACING_S)
        await response(scope, receive, send)


async def _body_never_read() -> Message:
    """The receive of a request that matches no door: its body is not for any route to read."""
    return {"type": "http.disconnect"}
