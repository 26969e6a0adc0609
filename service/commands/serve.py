"""`python -m service serve`: run the API under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

__all__ = ["register"]

log = logging.getLogger("service")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the API with uvicorn (settings: KDOCT_* and .env)")
    parser.add_argument("--host", help="bind address (KDOCT_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (KDOCT_PORT, default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (KDOCT_WORKERS, default 1)")
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kdoct.errors import ConfigError
    from service.config import load_settings
    from service.logs import configure_logging

    # Workers build their own settings from the environment: put the command-line overrides there.
    for name in ("host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"KDOCT_{name.upper()}"] = str(value)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes share /metrics through files; set before any worker imports prometheus_client.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kdoct-prometheus-")
    configure_logging(settings.log_level)
    url = f"http://{settings.host}:{settings.port}"
    log.info("serving on %s (API docs: %s/docs)", url, url)
    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
        limit_concurrency=settings.limit_concurrency,
        access_log=False,
    )
    return 0
