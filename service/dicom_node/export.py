"""Delivering a series' result objects (the Comprehensive SR and the Encapsulated PDF) to the PACS.

Each object goes by C-STORE to KDOCT_DICOM_DESTINATION (pynetdicom, calling AE KDOCT_DICOM_AE_TITLE,
Explicit VR Little Endian) and/or by STOW-RS to KDOCT_DICOMWEB_URL when KDOCT_DICOMWEB_STOW is true.

Delivery is confirmed, never assumed from a success status or a 2xx:
- with KDOCT_DICOMWEB_URL set, a QIDO-RS search (StudyInstanceUID + SOPInstanceUID) must find the object
  (polled for up to CONFIRM_TIMEOUT_S); sent but not found is `unconfirmed`, and retried;
- without it (C-STORE only), the C-STORE success status (or a warning: stored, coerced) is the only
  confirmation the protocol gives, and is taken as one.
With KDOCT_DICOMWEB_URL set, QIDO-RS is asked before an object is sent whether the destination has it
already (a previous attempt that was stored but not confirmed in time, a replay): then it is not sent
again. Without it nothing can be asked, and a second deliver() of the same objects sends them again
(a PACS keeps one instance per SOP Instance UID). An object confirmed is never re-sent by a later
attempt: a retry re-sends only what is not yet delivered, so no duplicates.

Attempts: up to `attempts` rounds, waiting backoff_s, 2*backoff_s, ... (at most MAX_BACKOFF_S) between
them; then the undelivered objects go to the dead letters (dead_letter.py) and deliver() returns False.
Every attempt of every object is noted in the AttemptLog (dicom_export_attempts) and counted in
kdoct_dicom_exports_total{kind, outcome}. Network operations are bounded: ACSE, DIMSE and network
timeouts of NETWORK_TIMEOUT_S, HTTP requests of HTTP_TIMEOUT_S, dicomweb-client's own retries off.

Nothing here logs a UID or a patient attribute (dicomweb-client and pynetdicom log UIDs at INFO and
DEBUG, retrying the failed URL at WARNING: their loggers are held above that); details on record are
error classes and statuses only.
"""

from __future__ import annotations

import io
import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from kdoct.errors import ConfigError
from service.dicom_node.dead_letter import DeadLetterEntry, DeadLetters
from service.dicom_node.peers import Peer, parse_destination
from service.dicom_node.results import ResultObject  # defined beside SeriesResult; part of this API
from service.prometheus import DICOM_EXPORTS

if TYPE_CHECKING:
    from service.db.export_attempts import AttemptLog

__all__ = [
    "CONFIRM_TIMEOUT_S",
    "HTTP_TIMEOUT_S",
    "MAX_BACKOFF_S",
    "NETWORK_TIMEOUT_S",
    "SOP_CLASSES",
    "Exporter",
    "ReplaySummary",
    "ResultObject",
]

log = logging.getLogger(__name__)

NETWORK_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
CONFIRM_TIMEOUT_S = 5.0
CONFIRM_POLL_S = 0.1
MAX_BACKOFF_S = 60.0
# Comprehensive SR Storage, Encapsulated PDF Storage.
SOP_CLASSES = {"sr": "1.2.840.10008.5.1.4.1.1.88.33", "pdf": "1.2.840.10008.5.1.4.1.1.104.1"}
_SOP_INSTANCE_UID_TAG = "00080018"

# Their INFO/DEBUG messages carry study and instance UIDs; retrying (dicomweb-client's) logs a failed
# request's exception at WARNING, whose message holds the URL, UIDs in its path.
for _name, _level in (
    ("dicomweb_client", logging.WARNING),
    ("pynetdicom", logging.WARNING),
    ("retrying", logging.ERROR),
):
    if logging.getLogger(_name).getEffectiveLevel() < _level:
        logging.getLogger(_name).setLevel(_level)


@dataclass(frozen=True)
class ReplaySummary:
    replayed: int  # entries tried
    delivered: int  # entries delivered, confirmed and removed
    still_dead_lettered: int  # entries left in the dead letters

    def line(self) -> str:
        return (
            f"replayed {self.replayed}, delivered {self.delivered}, "
            f"still dead-lettered {self.still_dead_lettered}"
        )


@dataclass
class _Route:
    kind: str  # "cstore" | "stow"
    label: str  # as on record: "cstore AE@host:port" or "stow <url>"


@dataclass
class _Client:
    """A DICOMweb client and the HTTP session it owns (closed after each round)."""

    web: DICOMwebClient
    session: requests.Session


@dataclass
class _Outcome:
    outcome: str  # delivered | failed | unconfirmed
    detail: str | None


def _url_without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _error_detail(exc: BaseException) -> str:
    """The error's class, and its HTTP status when it has one: never its message, which may hold a URL
    with UIDs in it."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"{type(exc).__name__}: HTTP {exc.response.status_code}"
    return type(exc).__name__


class Exporter:
    """Delivers the result objects of one series; blocking (the node calls deliver() in a thread).
    Thread-safe: each call opens its own association and HTTP session."""

    def __init__(
        self,
        *,
        calling_ae: str,
        destination: Peer | None,
        dicomweb_url: str | None,
        stow: bool,
        attempts: int,
        backoff_s: float,
        dead_letters: DeadLetters,
        attempt_log: AttemptLog,
    ) -> None:
        if stow and not dicomweb_url:
            raise ConfigError("KDOCT_DICOMWEB_STOW=true needs KDOCT_DICOMWEB_URL")
        if destination is None and not stow:
            raise ConfigError("nowhere to deliver: set KDOCT_DICOM_DESTINATION and/or KDOCT_DICOMWEB_STOW")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.calling_ae = calling_ae
        self.destination = destination
        self.dicomweb_url = dicomweb_url.rstrip("/") if dicomweb_url else None
        self.stow = stow
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.dead_letters = dead_letters
        self.attempt_log = attempt_log
        self._routes: list[_Route] = []
        if destination is not None:
            self._routes.append(_Route("cstore", f"cstore {destination}"))
        if stow and self.dicomweb_url:
            self._routes.append(_Route("stow", f"stow {_url_without_credentials(self.dicomweb_url)}"))

    @classmethod
    def from_settings(cls, settings, attempt_log: AttemptLog) -> Exporter | None:
        """None when neither KDOCT_DICOM_DESTINATION nor KDOCT_DICOMWEB_STOW is set."""
        destination = parse_destination(settings.dicom_destination) if settings.dicom_destination else None
        if destination is None and not settings.dicomweb_stow:
            return None
        return cls(
            calling_ae=settings.dicom_ae_title,
            destination=destination,
            dicomweb_url=settings.dicomweb_url,
            stow=settings.dicomweb_stow,
            attempts=settings.dicom_export_attempts,
            backoff_s=settings.dicom_export_backoff_s,
            dead_letters=DeadLetters(settings.dicom_dead_letter_dir),
            attempt_log=attempt_log,
        )

    def _pairs(self, count: int) -> set[tuple[int, int]]:
        """Every (object, route) of `count` objects: what a delivery has yet to do."""
        return {(index, route) for index in range(count) for route in range(len(self._routes))}

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)

    # -- delivery --------------------------------------------------------------------------------

    def deliver(self, prediction_id: str, objects: Sequence[ResultObject]) -> bool:
        """True: every object delivered and confirmed. False: what was not is in the dead letters."""
        pending = {
            (index, route_index) for index in range(len(objects)) for route_index in range(len(self._routes))
        }
        errors: dict[int, str] = {}
        for attempt in range(1, self.attempts + 1):
            self._round(prediction_id, objects, pending, attempt, errors, replay=False)
            if not pending:
                return True
            if attempt < self.attempts:
                time.sleep(self.backoff(attempt))
        self._dead_letter(prediction_id, objects, pending, errors, self.attempts)
        return False

    def replay(self) -> ReplaySummary:
        """One attempt at every dead-letter entry (`python -m service dicom-replay`): entries delivered and
        confirmed are removed; a partly delivered entry is replaced by one holding what is left."""
        replayed = delivered = 0
        for entry in self.dead_letters.entries():
            replayed += 1
            if self.redeliver(entry):
                delivered += 1
        return ReplaySummary(replayed, delivered, self.dead_letters.count())

    def redeliver(self, entry: DeadLetterEntry) -> bool:
        """One more attempt at a dead-letter entry; attempts that deliver are noted as `replayed`."""
        objects = entry.objects()
        prediction_id = entry.prediction_id
        pending = {
            (index, route_index) for index in range(len(objects)) for route_index in range(len(self._routes))
        }
        errors: dict[int, str] = {}
        attempt = entry.attempts + 1
        self._round(prediction_id, objects, pending, attempt, errors, replay=True)
        if not pending:
            self.dead_letters.remove(entry)
            return True
        # Replaced (new entry first, then the old one removed): what is left, its attempts counted.
        undelivered = sorted({index for index, _ in pending})
        self.dead_letters.put(
            prediction_id,
            [objects[index] for index in undelivered],
            attempts=attempt,
            errors={objects[index].sop_instance_uid: errors.get(index, "") for index in undelivered},
        )
        self.dead_letters.remove(entry)
        return False

    def _round(
        self,
        prediction_id: str,
        objects: Sequence[ResultObject],
        pending: set[tuple[int, int]],
        attempt: int,
        errors: dict[int, str],
        *,
        replay: bool,
    ) -> None:
        """One attempt at every pending (object, route); delivered pairs leave `pending`."""
        client = self._dicomweb_client()
        try:
            for route_index, route in enumerate(self._routes):
                indices = sorted(index for index, r in pending if r == route_index)
                if not indices:
                    continue
                outcomes = self._attempt(route, [objects[index] for index in indices], client)
                for index, outcome in zip(indices, outcomes, strict=True):
                    DICOM_EXPORTS.labels(kind=objects[index].kind, outcome=outcome.outcome).inc()
                    noted = "replayed" if replay and outcome.outcome == "delivered" else outcome.outcome
                    self.attempt_log.note(
                        prediction_id, objects[index].kind, route.label, attempt, noted, outcome.detail
                    )
                    if outcome.outcome == "delivered":
                        pending.discard((index, route_index))
                    else:
                        errors[index] = outcome.detail or outcome.outcome
                        log.warning(
                            "export of prediction %s: %s by %s, attempt %d: %s",
                            prediction_id, objects[index].kind, route.kind, attempt, outcome.detail,
                        )  # fmt: skip
        finally:
            if client is not None:
                client.session.close()

    def _attempt(self, route: _Route, objects: list[ResultObject], client: _Client | None) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(objects)
        if client is not None:
            # Already there (stored by an attempt that was not confirmed in time, or a replay): not resent.
            for position, obj in enumerate(objects):
                try:
                    if self._found(client, obj):
                        outcomes[position] = _Outcome("delivered", "already at the destination")
                except Exception as exc:  # QIDO unavailable: send anyway, confirm below
                    log.debug("QIDO-RS before sending failed: %s", type(exc).__name__)
        to_send = [position for position, outcome in enumerate(outcomes) if outcome is None]
        if to_send:
            send = self._cstore if route.kind == "cstore" else self._stow
            sent = send([objects[position] for position in to_send], client)
            for position, outcome in zip(to_send, sent, strict=True):
                if outcome.outcome == "delivered" and client is not None:
                    outcome = self._confirm(client, objects[position])
                outcomes[position] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    # -- C-STORE ---------------------------------------------------------------------------------

    def _cstore(self, objects: list[ResultObject], _client) -> list[_Outcome]:
        """One association for the round; each object's C-STORE status."""
        assert self.destination is not None
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = NETWORK_TIMEOUT_S
        ae.dimse_timeout = NETWORK_TIMEOUT_S
        ae.network_timeout = NETWORK_TIMEOUT_S
        ae.connection_timeout = NETWORK_TIMEOUT_S
        for sop_class in SOP_CLASSES.values():
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        try:
            assoc = ae.associate(
                self.destination.host, self.destination.port, ae_title=self.destination.ae_title
            )
        except Exception as exc:
            return [_Outcome("failed", f"association: {_error_detail(exc)}")] * len(objects)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            return [_Outcome("failed", f"association {why}")] * len(objects)
        outcomes = []
        try:
            for obj in objects:
                outcomes.append(self._store_one(assoc, obj))
        finally:
            if assoc.is_established:
                assoc.release()
        return outcomes

    @staticmethod
    def _store_one(assoc, obj: ResultObject) -> _Outcome:
        if not assoc.is_established:
            return _Outcome("failed", "association lost")
        try:
            dataset = pydicom.dcmread(io.BytesIO(obj.data))
            status = assoc.send_c_store(dataset)
        except Exception as exc:
            return _Outcome("failed", f"C-STORE: {_error_detail(exc)}")
        if "Status" not in status:  # no response: timed out, aborted
            return _Outcome("failed", "C-STORE: no response")
        category = code_to_category(status.Status)
        if category in ("Success", "Warning"):
            return _Outcome(
                "delivered", None if category == "Success" else f"C-STORE warning 0x{status.Status:04X}"
            )
        return _Outcome("failed", f"C-STORE status 0x{status.Status:04X}")

    # -- DICOMweb --------------------------------------------------------------------------------

    def _dicomweb_client(self) -> _Client | None:
        if self.dicomweb_url is None:
            return None
        session = requests.Session()
        client = DICOMwebClient(self.dicomweb_url, session=session, timeout=HTTP_TIMEOUT_S)
        client.set_http_retry_params(retry=False)  # our attempts are the retries
        return _Client(client, session)

    def _stow(self, objects: list[ResultObject], client: _Client | None) -> list[_Outcome]:
        """One STOW-RS request for the round; objects the response lists as failed are failed."""
        assert client is not None
        try:
            datasets = [pydicom.dcmread(io.BytesIO(obj.data)) for obj in objects]
            response = client.web.store_instances(datasets)
        except Exception as exc:
            return [_Outcome("failed", f"STOW-RS: {_error_detail(exc)}")] * len(objects)
        failed = {
            str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0))
            for item in (response.get("FailedSOPSequence") or [])
        }
        return [
            _Outcome("failed", f"STOW-RS failure reason 0x{failed[obj.sop_instance_uid]:04X}")
            if obj.sop_instance_uid in failed
            else _Outcome("delivered", None)
            for obj in objects
        ]

    @staticmethod
    def _found(client: _Client, obj: ResultObject) -> bool:
        found = client.web.search_for_instances(
            study_instance_uid=obj.study_instance_uid, search_filters={"SOPInstanceUID": obj.sop_instance_uid}
        )
        for item in found or []:
            values = item.get(_SOP_INSTANCE_UID_TAG, {}).get("Value") or []
            if obj.sop_instance_uid in values:
                return True
        return False

    def _confirm(self, client: _Client, obj: ResultObject) -> _Outcome:
        """Sent: found by QIDO-RS within CONFIRM_TIMEOUT_S is delivered, else unconfirmed."""
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        error = None
        while True:
            try:
                if self._found(client, obj):
                    return _Outcome("delivered", None)
                error = None
            except Exception as exc:
                error = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(CONFIRM_POLL_S)
        why = f"QIDO-RS: {_error_detail(error)}" if error is not None else "not found by QIDO-RS"
        return _Outcome("unconfirmed", f"{why} within {CONFIRM_TIMEOUT_S:.0f} s of sending")

    # -- dead letters ----------------------------------------------------------------------------

    def _dead_letter(
        self,
        prediction_id: str,
        objects: Sequence[ResultObject],
        pending: set[tuple[int, int]],
        errors: dict[int, str],
        attempts: int,
    ) -> None:
        undelivered = sorted({index for index, _ in pending})
        left = [objects[index] for index in undelivered]
        self.dead_letters.put(
            prediction_id,
            left,
            attempts=attempts,
            errors={objects[index].sop_instance_uid: errors.get(index, "") for index in undelivered},
        )
        for index in undelivered:
            obj = objects[index]
            DICOM_EXPORTS.labels(kind=obj.kind, outcome="dead_lettered").inc()
            for route_index in sorted(r for i, r in pending if i == index):
                route = self._routes[route_index]
                self.attempt_log.note(
                    prediction_id, obj.kind, route.label, attempts, "dead_lettered", errors.get(index)
                )
        log.error(
            "export of prediction %s: %d object(s) dead-lettered after %d attempts",
            prediction_id, len(left), attempts,
        )  # fmt: skip
