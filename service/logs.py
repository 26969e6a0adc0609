"""Where the service's log lines go: stderr, one format, the configured level."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str) -> None:
    """The service's log lines on stderr at ``level``. Runs in the serving process and again in each
    uvicorn worker, which starts without a handler of its own; a no-op where logging is already
    configured (tests, an embedding application). The chain checkpoints (logger kdoct.anchor) are
    logged at every level: their copy in the log is what survives an edited checkpoint file.

    The DICOM libraries speak only from WARNING up, whatever the level: highdicom's INFO lines name the
    source data set by its UIDs, and pynetdicom's INFO and DEBUG lines dump whole requests, identifiers
    and UIDs included; the node logs its own events without them."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kdoct.anchor").setLevel(logging.INFO)
    for library in ("highdicom", "pynetdicom"):
        logging.getLogger(library).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
