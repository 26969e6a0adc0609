"""GET /docs: Swagger UI from the service's own files (issue 23, case 14: FastAPI's page loaded an
unpinned swagger-ui-dist@5 from a CDN, without SRI, on the service's origin), under a
Content-Security-Policy that allows no other origin. That it renders under that policy in a real
browser: tests/e2e/test_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

# Sources a directive may name without naming another origin.
_LOCAL_SOURCES = {"'self'", "'none'", "data:", "blob:"}


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-openapi-url") and value:
                self.urls.append(value)


@pytest.fixture
def client(make_settings, tmp_path):
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/kdoct.db", spool_dir=tmp_path / "spool")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_docs_references_only_the_services_own_assets_and_they_are_served(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _References()
    parser.feed(page.text)
    assert parser.urls, "the page references nothing: not the Swagger UI page"
    base = str(page.url)
    for reference in parser.urls:
        url = urlsplit(urljoin(base, reference))
        assert url.netloc == "testserver" or url.scheme == "data", f"{reference} is on another origin"
        if url.scheme == "data":
            continue
        asset = client.get(url.path)
        assert asset.status_code == 200, f"{reference}: {asset.status_code}"
    assert not re.search(r"https?://|//cdn|jsdelivr|unpkg", page.text)
    scripts = client.get("/static/swagger/swagger-ui-bundle.js")
    assert scripts.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert len(scripts.content) > 1_000_000  # the real bundle, not a stub
    # The licence travels with the files (Apache-2.0 asks for it, and for the NOTICE).
    assert "Apache License" in client.get("/static/swagger/LICENSE").text
    assert "SmartBear" in client.get("/static/swagger/NOTICE").text
    # The page starts Swagger UI on this service's schema.
    assert client.get(urljoin(base, "openapi.json")).json()["info"]["title"].startswith("kdoct")


def test_docs_content_security_policy_allows_no_other_origin(client) -> None:
    policy = client.get("/docs").headers.get("content-security-policy")
    assert policy, "/docs has no Content-Security-Policy"
    directives = dict((parts[0], parts[1:]) for parts in (d.split() for d in policy.split(";") if d.strip()))
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]  # no inline script, no eval
    assert directives["frame-ancestors"] == ["'none'"]
    for name, sources in directives.items():
        assert set(sources) <= _LOCAL_SOURCES, f"{name} allows {sources}"


def test_redoc_is_not_served(client) -> None:
    # FastAPI's /redoc loads its script from a CDN too: not offered.
    assert client.get("/redoc").status_code == 404
