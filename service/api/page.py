"""The clinician web page: static HTML, CSS and JavaScript from service/static, served at `/`; and
the API's Swagger UI at `/docs`, from the copy in service/static/swagger.

No build step and nothing from another site: the page calls the same API as every other client,
with the API key the user enters (kept in the browser tab's sessionStorage).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount_static", "router"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page holds no secrets and no data, but must not be framed by another site (clickjacking of the
# feedback buttons), and it loads nothing from elsewhere. Overlays arrive as data: URLs,
# previews of the user's own file as blob: URLs.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/docs")
async def api_docs() -> FileResponse:
    """Swagger UI, served from service/static/swagger (vendored) under the same policy as the page:
    FastAPI's own /docs loads it from a CDN, unpinned and without SRI, on the service's origin."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers=_PAGE_HEADERS)


def mount_static(app: FastAPI) -> None:
    """Serve the page's files under /static (outside the OpenAPI schema)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
