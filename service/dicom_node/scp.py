"""The node's DICOM face (pynetdicom): C-ECHO and C-STORE, associations allow-listed.

At association (EVT_REQUESTED, before any negotiation): a caller not on KDOCT_DICOM_CALLERS is rejected
permanently ("calling AE title not recognised"); while the store is full, or KDOCT_DICOM_MAX_ASSOCIATIONS
are open, transiently ("local limit exceeded"): the sender keeps its instances and retries later.

A C-STORE's data set is written by pynetdicom to a temporary file as it arrives (never held in memory,
STORE_RECV_CHUNKED_DATASET); the handler passes that file to `admit` (service/dicom_node/node.py) and
answers its status. Result objects (SR, Encapsulated PDF) are accepted and dropped without a look, so a
PACS that routes the node's own results back to it gets success, and nothing is classified twice.

Failure statuses (PS3.4 B.2.3; the low byte is this node's own, the ErrorComment says what was wrong):
0xA700 out of resources now (the memory budget, the admission queue: retry later), 0xA710 too large
for this node (frames, pixels, bytes: do not retry), 0xA900 not an accepted image, 0xC000 cannot be
understood (undecodable header), 0xC001 the node failed to store it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, _config, evt

from service import prometheus
from service.dicom_node.peers import Callers
from service.dicom_node.transport import MAX_PDU_BYTES, BoundedAssociationServer
from service.imaging import TRANSFER_SYNTAXES

__all__ = [
    "CLASSIFIED_SOP_CLASSES",
    "IGNORED_SOP_CLASSES",
    "STATUS",
    "StorageSCP",
    "StoreOutcome",
]

log = logging.getLogger(__name__)

# The data set of a C-STORE goes to a file as it arrives, whatever its size.
_config.STORE_RECV_CHUNKED_DATASET = True

VERIFICATION = "1.2.840.10008.1.1"
CLASSIFIED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.4": "Ophthalmic Tomography Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}
# Reports, the node's own included: stored by the PACS, never classified here.
IGNORED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
_PLAIN_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")

STATUS = {
    "success": 0x0000,
    "busy": 0xA700,
    "too_large": 0xA710,
    "unsupported": 0xA900,
    "invalid": 0xC000,
    "failed": 0xC001,
}


@dataclass(frozen=True)
class StoreOutcome:
    status: str  # a key of STATUS
    comment: str = ""  # what was wrong, for the sender's log: never a UID or a patient attribute


Admit = Callable[[Path, str, str], StoreOutcome]  # (file, calling AE, SOP Instance UID) -> outcome


class StorageSCP:
    """The application entity: `admit` decides each instance; `has_room` says whether the store may
    take more (checked at association)."""

    def __init__(
        self,
        *,
        ae_title: str,
        callers: Callers,
        admit: Admit,
        has_room: Callable[[], bool],
        max_associations: int,
    ) -> None:
        self.callers = callers
        self.admit = admit
        self.has_room = has_room
        self.max_associations = max_associations
        ae = AE(ae_title=ae_title)
        # Ours is the check at EVT_REQUESTED (established associations, counted); pynetdicom's own counts
        # every connection, which transport.py bounds at twice ours: it must never be the one to refuse.
        ae.maximum_associations = 2 * max_associations + 1
        # A connection that sends no association request within this is closed (real peers take ms).
        ae.acse_timeout = 10
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        # Senders split a data set into PDUs of at most this size: pynetdicom handles each in Python, so
        # 1 MiB rather than its 16 KiB default (a 4 MB volume in 4 PDUs, not 256).
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.add_supported_context(VERIFICATION)
        for sop_class in CLASSIFIED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        for sop_class in IGNORED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(_PLAIN_SYNTAXES))
        self.ae = ae
        self._server = None

    def start(self, host: str, port: int) -> None:
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self._on_store),
        ]
        # Connections beyond the associations allowed are refused as they arrive; those within the
        # margin are rejected at association, counted (busy).
        self._server = self.ae.make_server(
            (host, port),
            evt_handlers=handlers,
            server_class=BoundedAssociationServer,
            max_connections=2 * self.max_associations,
            per_address=self.max_associations,
        )
        threading.Thread(target=self._server.serve_forever, name="kdoct-dicom-scp", daemon=True).start()
        log.info("DICOM node %s listening on %s:%d", self.ae.ae_title, host, port)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        address = assoc.requestor.address
        if not self.callers.allows(calling, address):
            log.warning(
                "DICOM association refused: caller %r from %s is not on KDOCT_DICOM_CALLERS", calling, address
            )
            _reject(assoc, (0x01, 0x01, 0x03), "rejected_caller")  # permanent: calling AE not recognised
            return
        # Established ones only: connections still to send their request are bounded apart (transport.py).
        established = [
            other for other in self.ae.active_associations if other.is_acceptor and other.is_established
        ]
        if len(established) >= self.max_associations:
            _reject(assoc, (0x02, 0x03, 0x02), "busy")  # transient: local limit exceeded
            return
        if not self.has_room():
            log.warning("DICOM association refused: the store is full (KDOCT_DICOM_STORE_MAX_BYTES)")
            _reject(assoc, (0x02, 0x03, 0x02), "store_full")
            return
        prometheus.DICOM_ASSOCIATIONS.labels(outcome="accepted").inc()

    def _on_store(self, event) -> Dataset:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        if sop_class in IGNORED_SOP_CLASSES:
            prometheus.DICOM_INSTANCES.labels(outcome="ignored").inc()
            return _status(StoreOutcome("success"))
        if sop_class not in CLASSIFIED_SOP_CLASSES:  # no context was accepted for it: cannot happen
            return _status(StoreOutcome("unsupported", "not an image this node classifies"))
        instance = str(request.AffectedSOPInstanceUID)
        if not UID(instance).is_valid:
            return _status(StoreOutcome("invalid", "the Affected SOP Instance UID is not a valid UID"))
        outcome = self.admit(Path(event.dataset_path), event.assoc.requestor.ae_title.strip(), instance)
        return _status(outcome)


def _reject(assoc, result_source_diagnostic: tuple[int, int, int], outcome: str) -> None:
    """An A-ASSOCIATE-RJ, then the association ended as pynetdicom ends its own rejections (kill waits
    for the reject to be sent before the socket closes)."""
    prometheus.DICOM_ASSOCIATIONS.labels(outcome=outcome).inc()  # counted before the peer hears of it
    assoc.acse.send_reject(*result_source_diagnostic)
    assoc.kill()


def _status(outcome: StoreOutcome) -> Dataset:
    status = Dataset()
    status.Status = STATUS[outcome.status]
    if outcome.comment:
        status.ErrorComment = outcome.comment[:64]  # LO: 64 characters
    return status
