"""RFC 9457 problem details: every error the service answers is `application/problem+json` with a
stable `type` URI, so clients branch on `type`, never on the wording of `detail`. The one exception
is the Open Inference Protocol under /v2, whose errors are `{"error": detail}` as that protocol says."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import prometheus

__all__ = [
    "OIP_PREFIX",
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPES",
    "Problem",
    "ProblemDetail",
    "install_problem_handlers",
    "problem_response",
]

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://kdoct.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# Errors under this path are answered in the Open Inference Protocol's own shape, not problem+json.
OIP_PREFIX = "/v2"

# slug -> (status, title). The slugs are part of the API: never rename one.
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "Bad request"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "not-acceptable": (406, "Not acceptable"),
    "conflict": (409, "Conflict"),
    "payload-too-large": (413, "Upload too large"),
    "request-timeout": (408, "Request timeout"),
    "decompression-bomb": (413, "Image too large to decode"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "invalid-image": (422, "Invalid image"),
    "too-many-requests": (429, "Too many requests"),
    "validation-error": (422, "Invalid request"),
    "second-opinion-unavailable": (422, "Second opinion unavailable"),
    "internal-error": (500, "Internal server error"),
    "not-ready": (503, "Service not ready"),
    "overloaded": (503, "Service overloaded"),
    "inference-failed": (503, "Inference failed"),
    "record-unavailable": (503, "Prediction could not be recorded"),
}


class ProblemDetail(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str = Field(examples=["https://kdoct.dev/problems/unsupported-media-type"])
    title: str = Field(examples=["Unsupported media type"])
    status: int = Field(examples=[415])
    detail: str = Field(examples=["GIF uploads are not accepted: send PNG, JPEG, TIFF, BMP or DICOM"])
    instance: str | None = Field(None, examples=["/classify"])
    request_id: str | None = None


_STATUS_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized", 403: "forbidden"}


class Problem(Exception):
    """An error answered as problem+json. `reason` is the bounded metrics label for rejections."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        if slug not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {slug!r}")
        super().__init__(detail)
        self.slug = slug
        self.status = status or PROBLEM_TYPES[slug][0]
        self.detail = detail
        self.reason = reason
        self.headers = headers or {}


def problem_response(
    slug: str,
    detail: str,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    instance: str | None = None,
) -> Response:
    default_status, title = PROBLEM_TYPES[slug]
    if instance is not None and (instance == OIP_PREFIX or instance.startswith(OIP_PREFIX + "/")):
        # Open Inference Protocol clients (tritonclient, KServe's) read only {"error": "..."}.
        return Response(
            json.dumps({"error": detail}),
            status_code=status or default_status,
            media_type="application/json",
            headers=headers,
        )
    body: dict[str, object] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status or default_status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    return Response(
        json.dumps(body),
        status_code=status or default_status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        if exc.reason:
            prometheus.REJECTED_REQUESTS.labels(reason=exc.reason).inc()
        return problem_response(
            exc.slug,
            exc.detail,
            status=exc.status,
            headers=exc.headers,
            request_id=_request_id(request),
            instance=request.url.path,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        prometheus.REJECTED_REQUESTS.labels(reason="bad_request").inc()
        parts = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg')}")
        return problem_response(
            "validation-error",
            "; ".join(parts) or "invalid request",
            request_id=_request_id(request),
            instance=request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        slug = _STATUS_SLUGS.get(
            exc.status_code, "bad-request" if exc.status_code < 500 else "internal-error"
        )
        return problem_response(
            slug,
            str(exc.detail),
            status=exc.status_code,
            headers=getattr(exc, "headers", None),
            request_id=_request_id(request),
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log (no request data in it); the client gets no internals.
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return problem_response(
            "internal-error",
            "an unexpected error occurred; it has been logged",
            request_id=_request_id(request),
            instance=request.url.path,
        )
