"""service/api/accept.py: the one reading of the Accept header (POST /classify's DICOM SR and
GET /predictions/{id}'s FHIR both use it)."""

from __future__ import annotations

import pytest

from service.api.accept import Accept


@pytest.mark.parametrize(
    ("header", "named", "json_quality"),
    [
        (None, 0.0, 0.0),
        ("", 0.0, 0.0),
        ("application/x", 1.0, 0.0),
        ("application/x;q=0.5, application/json;q=0.25", 0.5, 0.25),
        ("application/x;q=1.000, */*;q=0.001", 1.0, 0.001),
        ("application/x, application/*;q=0, */*", 1.0, 0.0),  # the most specific range decides
        ("APPLICATION/X ; Q=0.7", 0.7, 0.0),
        ("application/x;q=0.7;ext=1, application/x;q=0.2", 0.7, 0.0),  # the highest weight named
        # Not qvalues (RFC 9110): they count as 0, never as 1.
        ("application/x;q=2", 0.0, 0.0),
        ("application/x;q=1.5", 0.0, 0.0),
        ("application/x;q=-1", 0.0, 0.0),
        ("application/x;q=nan", 0.0, 0.0),
        ("application/x;q=0.0001", 0.0, 0.0),
        ("application/x;q=", 0.0, 0.0),
        (",,;q=1, ,application/x", 1.0, 0.0),
    ],
)
def test_weights(header, named, json_quality):
    accept = Accept.parse(header)
    assert accept.named("application/x") == named
    assert accept.quality("application/json") == json_quality


@pytest.mark.parametrize(
    ("header", "prefers"),
    [
        ("application/x;q=0, application/json", False),
        ("application/x;q=0.4, application/json", False),
        ("application/x;q=0.4, */*", False),
        ("*/*", False),  # a wildcard never asks for a form by name
        ("application/x, application/json", True),
        ("application/x;q=0.4, application/json;q=0.4", True),
        ("application/x;q=0.1", True),
    ],
)
def test_prefers_needs_the_form_by_name_at_least_as_high_as_json(header, prefers):
    assert Accept.parse(header).prefers("application/x") is prefers
