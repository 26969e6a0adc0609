"""`python -m service audit verify`: check the predictions hash chain."""

from __future__ import annotations

import argparse

from service.commands._database import add_database_option, open_engine
from service.db.audit import verify


def register(subparsers) -> None:
    parser = subparsers.add_parser("audit", help="check the prediction records")
    commands = parser.add_subparsers(dest="audit_command", required=True)
    check = commands.add_parser("verify", help="verify the hash chain; exit 1 at the first broken link")
    add_database_option(check)
    check.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    with open_engine(args) as engine:
        report = verify(engine)
    if report.ok:
        print(f"ok: {report.rows_checked} prediction records, chain intact")
        return 0
    broken = report.broken
    print(
        f"BROKEN at sequence {broken.sequence} (prediction {broken.prediction_id}): {broken.reason}; "
        f"{report.rows_checked} records before it are intact"
    )
    return 1
