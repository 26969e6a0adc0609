"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

RequestContextMiddleware gives every request an id (the client's X-Request-ID when it is sane, else
a new one), echoes it, caps the request body before the app sees it (Starlette spools file parts to
disk without any bound), and observes kdoct_request_duration_seconds by route template.

Nothing expensive happens before authentication: a request with a body is authenticated from its
Authorization header (`authenticate`) before a byte of the body is read, so an unauthenticated client
cannot make the service buffer uploads; bodies are capped per route (feedback: 16 KiB) and each read
of the body must arrive within `body_read_timeout_s` (a slow sender cannot hold a connection open).
The route's own dependency then checks the key's scope (a cached lookup).

Classifying routes are admitted after the key check and before the body is read (service/admission.py):
beyond the limit they are refused with 503 + Retry-After at once, without reading or decoding the upload.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.admission import Admission, admitted_route
from service.problems import Problem, problem_response

__all__ = ["REQUEST_ID_HEADER", "RequestContextMiddleware"]

# A refusal is held this long (no slot, no CPU: the event loop serves others meanwhile) before it is
# sent. Without it, clients that resend at once were refused ~600 times a second and that HTTP work
# took the CPU from the admitted requests (docs/BENCHMARKS.md, goodput under overload).
OVERLOAD_PACING_S = 0.2

REQUEST_ID_HEADER = "X-Request-ID"
# Client ids end up in logs and records: only short, plain ones are echoed (no log injection).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
# Routes whose bodies are small JSON: no reason to accept megabytes there.
FEEDBACK_BODY_BYTES = 16 << 10
_SMALL_BODY_ROUTES = (re.compile(r"/predictions/[^/]+/feedback"),)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        known_paths: Collection[str] = (),
        authenticate: Callable[[str | None, str | None], Awaitable[object]] | None = None,
        body_read_timeout_s: float | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.known_paths = set(known_paths)
        self.authenticate = authenticate
        self.body_read_timeout_s = body_read_timeout_s
        self.admission = admission

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
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        admitted = False
        try:
            if method in _BODY_METHODS:
                if not await self._authenticated(scope, receive, send_with_id, headers, request_id):
                    return
                if self.admission is not None and admitted_route(scope["path"]):
                    if not self.admission.try_enter():
                        await self._overloaded(scope, receive, send_with_id, request_id)
                        return
                    admitted = True  # held until the answer has been sent (finally, below)
                receive = await self._capped_body(scope, receive, send_with_id, headers, request_id)
                if receive is None:
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            if admitted:
                self.admission.leave()
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.known_paths else "unmatched"
            )
            metrics.REQUEST_DURATION.labels(route=template, method=method, status=str(status)).observe(
                time.perf_counter() - started
            )

    async def _authenticated(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, request_id: str
    ) -> bool:
        """Whether the request may have its body read; otherwise it has been answered (401/429/503) and
        its connection is closed with the body unread. Routes without a body check keys themselves."""
        if self.authenticate is None:
            return True
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        peer = scope.get("client")  # (host, port); the host's failures are counted (429 beyond a limit)
        try:
            await self.authenticate(key, peer[0] if peer else None)
        except Problem as problem:
            headers_out = {**problem.headers, "Connection": "close"}
            response = problem_response(
                problem.slug,
                problem.detail,
                request_id=request_id,
                instance=scope["path"],
                headers=headers_out,
            )
            await response(scope, receive, send)
            return False
        return True

    def _body_cap(self, scope: Scope) -> tuple[int, str]:
        if _small_body(scope):
            return FEEDBACK_BODY_BYTES, "for this route"
        return self.max_body_bytes, "(KDOCT_MAX_UPLOAD_BYTES)"

    async def _capped_body(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, request_id: str
    ) -> Receive | None:
        """Read the body up to the cap and return a receive that replays it; None when answered already."""
        cap, which = self._body_cap(scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(
                    scope, receive, send, "bad-request", "invalid Content-Length header", request_id
                )
                return None
            if int(declared) > cap:
                await self._too_large(scope, receive, send, request_id, cap, which)
                return None
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_read_timeout_s)
            except TimeoutError:
                detail = f"the request body did not arrive within {self.body_read_timeout_s:g} s"
                await self._refuse(scope, receive, send, "request-timeout", detail, request_id)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                await self._too_large(scope, receive, send, request_id, cap, which)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, cap: int, which: str
    ) -> None:
        metrics.REJECTED_REQUESTS.labels(reason="too_large").inc()
        detail = f"the request body exceeds {cap} bytes {which}"
        await self._refuse(scope, receive, send, "payload-too-large", detail, request_id)

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """Refused before the body is read: the cheapest 503 there is. The connection is closed, the body
        unread, as for a refused key. Measured (docs/BENCHMARKS.md, goodput under overload): keeping it
        open made refusals so cheap that clients resending at once were refused 1500 times a second
        and starved the admitted requests of the CPU; a reconnect per refusal paces them."""
        metrics.REJECTED_REQUESTS.labels(reason="queue_full").inc()
        limit = self.admission.limit
        detail = (
            f"the service is full: {limit} classification requests in flight in this worker "
            f"(KDOCT_MAX_QUEUE + batch size + decode threads); retry after 1 s"
        )
        response = problem_response(
            "overloaded", detail, request_id=request_id, instance=scope["path"],
            headers={"Retry-After": "1", "Connection": "close"},
        )  # fmt: skip
        await asyncio.sleep(OVERLOAD_PACING_S)
        await response(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, slug: str, detail: str, request_id: str
    ) -> None:
        if slug in ("bad-request", "request-timeout"):
            metrics.REJECTED_REQUESTS.labels(reason="bad_request").inc()
        # The rest of the body is not read: close the connection rather than drain it.
        response = problem_response(
            slug, detail, request_id=request_id, instance=scope["path"], headers={"Connection": "close"}
        )
        await response(scope, receive, send)


def _small_body(scope: Scope) -> bool:
    return any(route.fullmatch(scope["path"]) for route in _SMALL_BODY_ROUTES)
