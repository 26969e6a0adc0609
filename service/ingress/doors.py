"""The ways in: every route that takes a request body is a door, declared here and nowhere else.

A body-bearing request whose method and path match no door never has its body read: the app answers
it (404, 405) with a receive that says the client went away. tests/service/test_ingress_doors.py
checks that every route of the app with POST/PUT/PATCH is a door, so a new route cannot skip the gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DICOM_SERIES", "DICOM_STORE", "FEEDBACK_BODY_BYTES", "Door", "HttpDoors"]

# Feedback bodies are small JSON: no reason to accept megabytes there.
FEEDBACK_BODY_BYTES = 16 << 10


@dataclass(frozen=True)
class Door:
    """A way in. `admitted` doors decode and infer: they take an admission slot and their images are
    charged to the request's Ticket. `max_body_bytes` None: the upload limit (KDOCT_MAX_UPLOAD_BYTES).
    `json_part` doors carry a JSON document (all of the body, or the first Inference-Header-Content-Length
    bytes of it) that is parsed whole, so its size is capped apart, before the body is read."""

    name: str
    scope: str
    admitted: bool
    max_body_bytes: int | None = None
    json_part: bool = False


CLASSIFY = Door("classify", "classify", admitted=True)
V2_INFER = Door("v2_infer", "classify", admitted=True, json_part=True)
FEEDBACK = Door("feedback", "feedback", admitted=False, max_body_bytes=FEEDBACK_BODY_BYTES)
# The DICOM node (service/dicom_node/): a C-STORE is probed and charged (frames, pixels, bytes) before it
# is stored, without a slot (nothing is decoded or inferred); a series takes a slot when it is classified.
DICOM_STORE = Door("dicom_store", "classify", admitted=False)
# Promotion and rollback (service/api/lifecycle.py) take no body: an empty one at most.
MODEL_CHANGE = Door("model_change", "admin", admitted=False, max_body_bytes=0)
DICOM_SERIES = Door("dicom_series", "classify", admitted=True)

_HTTP_DOORS: tuple[tuple[str, re.Pattern[str], Door], ...] = (
    ("POST", re.compile(r"/classify"), CLASSIFY),
    ("POST", re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer"), V2_INFER),
    ("POST", re.compile(r"/predictions/[^/]+/feedback"), FEEDBACK),
    ("POST", re.compile(r"/models/(?:candidates/[^/]+/promote|rollback)"), MODEL_CHANGE),
)


class HttpDoors:
    """The HTTP doors of the service, matched by method and path."""

    doors = tuple(door for _, _, door in _HTTP_DOORS)

    @staticmethod
    def match(method: str, path: str) -> Door | None:
        for door_method, pattern, door in _HTTP_DOORS:
            if method == door_method and pattern.fullmatch(path):
                return door
        return None
