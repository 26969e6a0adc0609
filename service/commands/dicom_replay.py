"""`python -m service dicom-replay`: deliver the DICOM node's dead letters (KDOCT_DICOM_DEAD_LETTER_DIR)
to the configured destination (KDOCT_DICOM_DESTINATION and/or STOW-RS to KDOCT_DICOMWEB_URL), confirmed
as the node confirms them (service/dicom_node/export.py). One attempt per entry: an entry delivered and
confirmed is removed, one that is not stays (what is left of it, its attempts counted) for the next run.
Every attempt is on record in dicom_export_attempts (a delivery as `replayed`). Prints one line,
"replayed N, delivered D, still dead-lettered K"; exit 0 when K is 0, else 1."""

from __future__ import annotations

import argparse

from service.commands._database import add_database_option

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dicom-replay",
        help="deliver the DICOM node's dead-lettered results again (settings: KDOCT_* and .env); "
        "exit 1 while any remain",
    )
    add_database_option(parser)
    parser.set_defaults(handler=replay)


def replay(args: argparse.Namespace) -> int:
    from kdoct.errors import ConfigError
    from service.config import load_settings
    from service.db.export_attempts import AttemptLog
    from service.db.session import make_engine
    from service.dicom_node.export import Exporter

    settings = load_settings()
    engine = make_engine(
        args.database_url or settings.database_url,
        statement_timeout_s=settings.db_statement_timeout_s,
        lock_timeout_s=settings.db_lock_timeout_s,
    )
    try:
        exporter = Exporter.from_settings(settings, AttemptLog.from_engine(engine))
        if exporter is None:
            raise ConfigError(
                "nowhere to deliver: set KDOCT_DICOM_DESTINATION and/or KDOCT_DICOMWEB_STOW with "
                "KDOCT_DICOMWEB_URL"
            )
        summary = exporter.replay()
    finally:
        engine.dispose()
    print(summary.line())
    return 0 if summary.still_dead_lettered == 0 else 1
