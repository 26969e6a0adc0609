"""`python -m service db upgrade|downgrade`: apply the Alembic migrations."""

from __future__ import annotations

import argparse
import sys

from service.commands._database import add_database_option, database_url
from service.db import migrate

# Revisions at or above the newest one that holds records or their protection (0003: append-only
# triggers on both tables and the runtime role's grants; 0004: the read log; 0005: the safety gate's
# verdicts, which the hash chain covers; 0006: the keyed chain epoch, without which keyed links are
# taken for unkeyed ones; 0007: the DICOM node's delivery attempts): downgrading to these loses nothing.
# Relative targets ("-1") and anything older need the flag.
PROTECTED_REVISION = "0007"
_SAFE_DOWNGRADE_TARGETS = {"0007", "head"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("db", help="database migrations")
    commands = parser.add_subparsers(dest="db_command", required=True)

    upgrade = commands.add_parser("upgrade", help="migrate the database to the latest schema (or --revision)")
    upgrade.add_argument("--revision", default="head")
    add_database_option(upgrade)
    upgrade.set_defaults(handler=_upgrade)

    downgrade = commands.add_parser("downgrade", help="migrate back to REVISION ('base' drops every table)")
    downgrade.add_argument("revision")
    downgrade.add_argument(
        "--allow-records-downgrade",
        action="store_true",
        help=f"needed to go below {PROTECTED_REVISION}: that drops the DICOM delivery attempts, the keyed "
        "chain epoch (keyed rows no longer verify), the safety gate's verdicts (the rows holding one no "
        "longer verify) and the read log, removes the records' append-only protection and runtime role "
        "grants, and 'base' drops the records themselves",
    )
    add_database_option(downgrade)
    downgrade.set_defaults(handler=_downgrade)


def _upgrade(args: argparse.Namespace) -> int:
    migrate.upgrade(database_url(args), args.revision)
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    if args.revision not in _SAFE_DOWNGRADE_TARGETS and not args.allow_records_downgrade:
        print(
            f"error: downgrading to {args.revision!r} goes below revision {PROTECTED_REVISION}: it drops "
            "the DICOM delivery attempts, the keyed chain epoch (no keyed row verifies after it), the "
            "safety gate's verdicts (breaking the hash of every row that holds one), the read log or "
            "removes the append-only protection of the prediction records (and 'base' drops "
            "them). Back the database "
            "up, then pass --allow-records-downgrade if you mean it.",
            file=sys.stderr,
        )
        return 2
    migrate.downgrade(database_url(args), args.revision)
    return 0
