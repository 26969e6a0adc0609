"""The node's TCP side, bounded before any DICOM is understood (pynetdicom's own is not):

- pynetdicom reads a PDU's declared length (up to 4 GiB) and keeps reading into memory until it has
  that many bytes, the A-ASSOCIATE-RQ too, before anyone knows who is calling: one unauthenticated
  peer streaming a "4 GiB" association request grew the node without bound. A PDU declared longer
  than MAX_PDU_READ_BYTES (the 1 MiB this node negotiates, and far more than any association request
  needs) closes the connection instead (pynetdicom then aborts the association);
- every connection gets a thread before its association is examined: at most `max_connections` are
  open at once, at most `per_address` of them from one address (so one peer's idle connections cannot
  take every slot from the PACS), and the next is closed as it is accepted.
"""

from __future__ import annotations

import logging
import socketserver
import threading

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from service import prometheus

__all__ = ["MAX_PDU_READ_BYTES", "BoundedAssociationServer"]

log = logging.getLogger(__name__)

MAX_PDU_BYTES = 1 << 20  # what the node negotiates (scp.py)
MAX_PDU_READ_BYTES = MAX_PDU_BYTES + 6  # a PDU's header (6 bytes) and at most that much after it


class _BoundedSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_READ_BYTES:
            log.warning(
                "DICOM connection closed: a PDU of %d bytes announced, over the %d this node accepts",
                nr_bytes, MAX_PDU_READ_BYTES,
            )  # fmt: skip
            prometheus.DICOM_ASSOCIATIONS.labels(outcome="oversized_pdu").inc()
            self.close()
            return bytearray()  # short: pynetdicom treats it as the connection closed
        return super().recv(nr_bytes)


class _BoundedRequestHandler(RequestHandler):
    def _create_association(self):
        assoc = super()._create_association()
        # The socket pynetdicom made for this connection, reading PDUs within the bound above.
        assoc.dul.socket.__class__ = _BoundedSocket
        return assoc


class BoundedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the PDU bound and at most `max_connections` open."""

    def __init__(self, *args, max_connections: int, per_address: int, **kwargs) -> None:
        self.max_connections = max_connections
        self.per_address = per_address
        self._open: dict[int, str] = {}  # id(request) -> the peer's address
        self._open_lock = threading.Lock()
        super().__init__(*args, request_handler=_BoundedRequestHandler, **kwargs)

    def verify_request(self, request, client_address) -> bool:
        address = str(client_address[0])
        with self._open_lock:
            from_address = sum(peer == address for peer in self._open.values())
            if len(self._open) >= self.max_connections or from_address >= self.per_address:
                prometheus.DICOM_ASSOCIATIONS.labels(outcome="busy").inc()
                return False  # socketserver closes it
            self._open[id(request)] = address
        return True

    def shutdown(self) -> None:
        """Stop serving and close the socket: not AssociationServer.shutdown, which also takes the server
        off the AE's own list, where make_server never put it."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.pop(id(request), None)
        super().shutdown_request(request)
