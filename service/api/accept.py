"""The Accept header (RFC 9110, section 12.5.1), read one way for every route that answers in more than
one form: POST /classify (JSON or a DICOM SR) and GET /predictions/{id} (JSON or HL7 FHIR).

A form other than JSON is answered only when the client names it with a weight above 0 that is at
least JSON's; JSON's weight is that of the most specific range that matches it (its own entry, else
`application/*`, else `*/*`). A header naming neither, or none at all, keeps JSON, as the service
always answered. A weight that is not a valid qvalue counts as 0: an unreadable weight never turns a
form on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JSON_MEDIA_TYPE", "Accept"]

JSON_MEDIA_TYPE = "application/json"
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


@dataclass(frozen=True)
class Accept:
    """The media ranges of one Accept header (lower-cased), each with the highest weight given to it."""

    weights: dict[str, float]

    @classmethod
    def parse(cls, header: str | None) -> Accept:
        weights: dict[str, float] = {}
        for part in (header or "").split(","):
            media, *params = (piece.strip() for piece in part.split(";"))
            if not media:
                continue
            q = 1.0
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    value = value.strip()
                    q = float(value) if _QVALUE.fullmatch(value) else 0.0
                    break  # what follows q are accept-extensions, not media type parameters
            media = media.lower()
            weights[media] = max(weights.get(media, 0.0), q)
        return cls(weights)

    def named(self, media: str) -> float:
        """The weight of `media` where the header names it; 0 where it does not (wildcards do not count)."""
        return self.weights.get(media, 0.0)

    def quality(self, media: str) -> float:
        """The weight of `media` by the most specific range that matches it; 0 where none does."""
        for candidate in (media, media.split("/", 1)[0] + "/*", "*/*"):
            if candidate in self.weights:
                return self.weights[candidate]
        return 0.0

    def prefers(self, media: str) -> bool:
        """Whether the client asked for `media` by name (q > 0) and weighs it at least as high as JSON."""
        wanted = self.named(media)
        return wanted > 0 and wanted >= self.quality(JSON_MEDIA_TYPE)
