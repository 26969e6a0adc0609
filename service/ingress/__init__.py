"""The one admission and budget layer every way in passes through (docs/SECURITY.md, "Ingress").

A door (doors.py) names a way in: its scope, whether it decodes and infers (an admission slot), and
its body cap. Whatever the transport, a request enters through IngressGate.enter (gate.py), in this
order, before a byte of its body is read: the key's scope for the door, the key's in-flight cap, an
admission slot. It leaves with a Ticket (budget.py) that every later cost is charged to, and that gives
everything back when the request is answered:

- the body, once complete (bodies still arriving are held on disk beyond the in-memory share, body.py);
- the images, counted from their headers before any pixel is decoded: frames and pixels across all the
  request's elements against the per-request limits (413), their decoded bytes against the process's
  memory budget (503 when it is spent, 413 when one request alone would exceed it).

The HTTP adapter is service/middleware.py; a new transport (the DICOM node) calls the gate itself.
"""
