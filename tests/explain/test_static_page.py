"""The clinician page's files: self-contained (no CDN, no build step), labelled, and never parsing API
text as HTML. The page's behaviour is driven in a real browser by tests/e2e/test_browser.py."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.label_targets: set[str] = set()
        self._open_labels = 0
        self.wrapped_controls: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes))
        if tag == "label":
            self._open_labels += 1
            if "for" in attributes:
                self.label_targets.add(attributes["for"])
        elif tag in ("input", "select", "textarea") and self._open_labels:
            self.wrapped_controls.add(attributes.get("id", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._open_labels -= 1


@pytest.fixture(scope="module")
def page() -> _PageParser:
    parser = _PageParser()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser


def test_page_loads_only_its_own_files(page: _PageParser) -> None:
    references = [
        attrs.get("src") or attrs.get("href") for tag, attrs in page.elements if tag in ("script", "link")
    ]
    assert "static/app.js" in references and "static/style.css" in references
    for reference in references:
        assert "//" not in reference, f"{reference} would load from another site"
        if not reference.startswith("data:"):
            assert (STATIC / Path(reference).name).is_file(), f"{reference} is missing from service/static"


def test_every_control_has_a_label(page: _PageParser) -> None:
    controls = [attrs for tag, attrs in page.elements if tag in ("input", "select", "textarea")]
    assert len(controls) >= 4
    for attrs in controls:
        control_id = attrs.get("id", "")
        assert control_id in page.label_targets or control_id in page.wrapped_controls, (
            f"#{control_id} has no label"
        )


def test_results_and_errors_are_announced(page: _PageParser) -> None:
    by_id = {attrs.get("id"): attrs for _, attrs in page.elements if "id" in attrs}
    assert by_id["results"]["aria-live"] == "polite"
    assert by_id["errors"]["role"] == "alert"
    assert page.elements[0] == ("html", {"lang": "en"})


def test_script_never_parses_text_as_html() -> None:
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"app.js uses {sink}: API text or file names could become markup"
    assert "sessionStorage" in script and "localStorage" not in script, (
        "the key lives in the tab session only"
    )
