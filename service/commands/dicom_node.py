"""`python -m service dicom-node`: the DICOM node (service/dicom_node/) in its own process.

It builds the service's app (service/app.py create_app) and runs its lifespan: the same bundles loaded,
verified, warmed up and golden-checked, the same records, writer, audit chain and ingress gate as the
HTTP API. It serves no HTTP API: only the node's own port for Prometheus and the health probes
(KDOCT_DICOM_HTTP_PORT: /metrics, /health/live, /health/ready). SIGTERM stops the SCP, lets the series
being classified finish (KDOCT_DRAIN_TIMEOUT_S), then drains the records as the API does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile

__all__ = ["register"]

log = logging.getLogger("service")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dicom-node", help="run the DICOM node: C-STORE/C-ECHO SCP, results back to the PACS (KDOCT_DICOM_*)"
    )
    parser.add_argument("--port", type=int, help="DICOM port (KDOCT_DICOM_PORT, default 11112)")
    parser.add_argument(
        "--http-port", type=int, help="metrics and health (KDOCT_DICOM_HTTP_PORT, default 9112)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kdoct.errors import ConfigError
    from service.config import load_settings
    from service.logs import configure_logging

    for name, variable in (("port", "KDOCT_DICOM_PORT"), ("http_port", "KDOCT_DICOM_HTTP_PORT")):
        if getattr(args, name) is not None:
            os.environ[variable] = str(getattr(args, name))
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    configure_logging(settings.log_level)
    return asyncio.run(serve_node(settings))


async def serve_node(settings) -> int:
    """The app's lifespan around the node and its HTTP port, until SIGTERM or SIGINT."""
    import uvicorn

    from service.app import create_app
    from service.state import app_state

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state = app_state(app)
        node, scp = _build_node(settings, state)
        await node.start()
        scp.start(settings.dicom_host, settings.dicom_port)
        http = uvicorn.Server(
            uvicorn.Config(
                _http_app(state, scp), host=settings.dicom_host, port=settings.dicom_http_port,
                log_level="warning", access_log=False, lifespan="off",
            )
        )  # fmt: skip
        # uvicorn handles SIGTERM/SIGINT while it serves, then restores the handlers it found and raises
        # the signal again: with the default handler that would kill the process before the SCP, the
        # series in progress and the records are drained. Ours only notes it: the drain below follows.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(
                signum, lambda received, frame: log.info("DICOM node stopping (signal %d)", received)
            )
        try:
            await http.serve()  # returns on SIGTERM / SIGINT
        finally:
            await asyncio.to_thread(scp.stop)
            await node.stop(settings.drain_timeout_s)
    return 0


def _build_node(settings, state):
    from service import prometheus
    from service.dicom_node.classify import SeriesClassifier
    from service.dicom_node.delivery import build_delivery
    from service.dicom_node.node import DicomNode
    from service.dicom_node.peers import parse_callers
    from service.dicom_node.scp import StorageSCP
    from service.dicom_node.series import SeriesTracker
    from service.dicom_node.store import InstanceStore

    pipeline = state.pipeline
    if settings.resolved_device == "cpu":
        # PyTorch runs only the Grad-CAM of each series here: on one core, beside the inference thread,
        # not on every core against it (docs/BENCHMARKS.md, "DICOM node": 0.57 -> see there).
        import torch

        torch.set_num_threads(1)
    callers = parse_callers(settings.dicom_callers)
    if not callers.entries:
        log.warning("KDOCT_DICOM_CALLERS is empty: every association will be refused")
    store = InstanceStore(
        settings.dicom_store_dir, settings.dicom_store_max_bytes, name=state.audit_key.file_name
    )
    # pynetdicom writes each arriving data set to a temporary file: on the store's volume, not /tmp.
    tempfile.tempdir = str(store.incoming())
    report, exporter = build_delivery(settings, state.records)
    node = DicomNode(
        gate=state.gate,
        intake=pipeline.intake,
        classifier=SeriesClassifier(state.gate, pipeline, state.recorder),
        store=store,
        tracker=SeriesTracker(settings.dicom_series_idle_s),
        report=report,
        deliver=exporter.deliver if exporter else None,
        housekeeping=exporter.dead_letters.update_gauge if exporter else None,
        max_upload_bytes=settings.max_upload_bytes,
        max_frames=settings.max_frames,
    )
    scp = StorageSCP(
        ae_title=settings.dicom_ae_title,
        callers=callers,
        admit=node.admit,
        has_room=store.has_room,
        max_associations=settings.dicom_max_associations,
    )
    prometheus.initialise_dicom_label_sets()
    return node, scp


def _http_app(state, scp):
    """GET /metrics, /health/live, /health/ready (200 once the models are ready and the SCP listens)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from service import prometheus

    async def metrics(request):
        body, content_type = prometheus.render_metrics()
        return Response(body, media_type=content_type)

    async def live(request):
        return JSONResponse({"status": "live"})

    async def ready(request):
        is_ready = state.ready and scp.listening
        return JSONResponse(
            {"status": "ready" if is_ready else "not ready"}, status_code=200 if is_ready else 503
        )

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/health/live", live), Route("/health/ready", ready)]
    )
