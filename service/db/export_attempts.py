"""AttemptLog: every delivery attempt of the DICOM node's result objects on record, in
dicom_export_attempts (revision 0007, append-only).

The log never blocks a delivery. A note is inserted synchronously with the records' engine (the sessions
factory of service/db/components.py's Records); when that fails (the database down, slow, or its schema
older than 0007) the attempt is written to the process log instead (logger service.db.export_attempts,
WARNING) and the delivery goes on. After a failure, notes go to the process log only for
`retry_after_s`, so an unreachable database costs one connect timeout per window, not one per attempt.
A note holds the headline prediction's id, never a UID or a patient attribute.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_sessionmaker
from service.db.tables import DicomExportAttempt

__all__ = ["ATTEMPT_OUTCOMES", "AttemptLog"]

log = logging.getLogger(__name__)

ATTEMPT_OUTCOMES = ("delivered", "failed", "unconfirmed", "dead_lettered", "replayed")
_TABLE = DicomExportAttempt.__table__


class AttemptLog:
    def __init__(self, sessions: sessionmaker[Session], *, retry_after_s: float = 30.0) -> None:
        self._sessions = sessions
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._down_until = 0.0

    @classmethod
    def from_engine(cls, engine: Engine, **kwargs) -> AttemptLog:
        return cls(make_sessionmaker(engine), **kwargs)

    def note(
        self, prediction_id: str, kind: str, destination: str, attempt: int, outcome: str, detail: str | None
    ) -> bool:
        """Insert one attempt; whether it is on record (False: only in the process log). Never raises."""
        if outcome not in ATTEMPT_OUTCOMES:
            raise ValueError(f"unknown export outcome {outcome!r}")
        row = {
            "id": uuid.uuid4(),
            "prediction_id": uuid.UUID(str(prediction_id)),
            "kind": kind,
            "destination": destination,
            "attempt": attempt,
            "outcome": outcome,
            "detail": detail,
            "created_at": datetime.now(UTC),
        }
        with self._lock:
            skip = time.monotonic() < self._down_until
        if not skip:
            try:
                with self._sessions.begin() as session:
                    session.execute(insert(_TABLE).values(**row))
                return True
            except Exception as exc:  # the log must never stop a delivery
                with self._lock:
                    self._down_until = time.monotonic() + self._retry_after_s
                log.warning(
                    "export attempt log: the database refused a note (%s); notes go to this log for %.0f s",
                    type(exc).__name__,
                    self._retry_after_s,
                )
        log.warning(
            "export attempt (not on record): prediction %s %s to %s attempt %d: %s%s",
            prediction_id,
            kind,
            destination,
            attempt,
            outcome,
            f" ({detail})" if detail else "",
        )
        return False
