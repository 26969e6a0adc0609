"""The DICOM node: kdoct as a DICOM application entity on the hospital network (docs/INTEGRATION.md).

A process of its own (`python -m service dicom-node`), scaled apart from the HTTP API, that classifies
through the same ClassificationPipeline, IngressGate, Recorder and metrics as POST /classify (the models,
records and gate are built by service.app's create_app and run by its lifespan, never a copy):

    C-ECHO / C-STORE ─► scp.py: callers allow-listed (peers.py) at association; refused while the store
        is full; each instance probed and charged through the gate's dicom_store door (frames, pixels,
        bombs: a failure status), then written fsync'd to the store (store.py)
    series.py: instances grouped by series; a series idle for KDOCT_DICOM_SERIES_IDLE_S is classified
        once (classify.py), as one request through the dicom_series door: one answer per instance, on
        record, the most suspicious frame explained
    results.py: what a classified series is (SeriesResult), for the reports
    reports: the Comprehensive SR (service/dicom_sr.py) and the Encapsulated PDF (pdf_report.py)
    export.py: C-STORE and/or STOW-RS, confirmed by QIDO-RS, retried with bounded backoff, then
        dead-lettered (dead_letter.py) until `python -m service dicom-replay`; every attempt on record
"""
