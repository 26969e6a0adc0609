"""`python -m service <command>`: serve, db, apikey, audit, dicom-node, dicom-retrieve, dicom-replay,
model, report; built with the scaffold both command lines share (kdoct/cli.py): one module per
subcommand under service/commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kdoct import cli

COMMAND_MODULES = [
    "service.commands.serve",
    "service.commands.db",
    "service.commands.apikey",
    "service.commands.audit",
    "service.commands.dicom_node",
    "service.commands.dicom_retrieve",
    "service.commands.dicom_replay",
    "service.commands.model",
    "service.commands.report",
]


def build_parser() -> argparse.ArgumentParser:
    return cli.build_parser("python -m service", "kdoct inference service", COMMAND_MODULES)


def _logging(args: argparse.Namespace) -> None:
    # `serve` sets up the server's own logging from KDOCT_LOG_LEVEL; -v only speaks for the others.
    if args.verbose and args.command != "serve":
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), argv, before=_logging)


if __name__ == "__main__":
    sys.exit(main())
