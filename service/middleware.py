"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

RequestContextMiddleware gives every request an id (the client's X-Request-ID when it is sane, else
a new one), echoes it, caps the request body before the app sees it (Starlette spools file parts to
disk without any bound), and observes kdoct_request_duration_seconds by route template.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.problems import problem_response

__all__ = ["REQUEST_ID_HEADER", "RequestContextMiddleware"]

REQUEST_ID_HEADER = "X-Request-ID"
# Client ids end up in logs and records: only short, plain ones are echoed (no log injection).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, known_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.known_paths = set(known_paths)

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
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        try:
            if method in _BODY_METHODS:
                receive = await self._capped_body(scope, receive, send_with_id, headers, request_id)
                if receive is None:
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.known_paths else "unmatched"
            )
            metrics.REQUEST_DURATION.labels(route=template, method=method, status=str(status)).observe(
                time.perf_counter() - started
            )

    async def _capped_body(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, request_id: str
    ) -> Receive | None:
        """Read the body up to the cap and return a receive that replays it; None when answered already."""
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(
                    scope, receive, send, "bad-request", "invalid Content-Length header", request_id
                )
                return None
            if int(declared) > self.max_body_bytes:
                await self._too_large(scope, receive, send, request_id)
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send, request_id)
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

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        metrics.REJECTED_REQUESTS.labels(reason="too_large").inc()
        detail = f"the request body exceeds {self.max_body_bytes} bytes (KDOCT_MAX_UPLOAD_BYTES)"
        await self._refuse(scope, receive, send, "payload-too-large", detail, request_id)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, slug: str, detail: str, request_id: str
    ) -> None:
        if slug == "bad-request":
            metrics.REJECTED_REQUESTS.labels(reason="bad_request").inc()
        # The rest of the body is not read: close the connection rather than drain it.
        response = problem_response(
            slug, detail, request_id=request_id, instance=scope["path"], headers={"Connection": "close"}
        )
        await response(scope, receive, send)
