"""`python -m service db upgrade|downgrade`: apply the Alembic migrations."""

from __future__ import annotations

import argparse

from service.commands._database import add_database_option, database_url
from service.db import migrate


def register(subparsers) -> None:
    parser = subparsers.add_parser("db", help="database migrations")
    commands = parser.add_subparsers(dest="db_command", required=True)

    upgrade = commands.add_parser("upgrade", help="migrate the database to the latest schema (or --revision)")
    upgrade.add_argument("--revision", default="head")
    add_database_option(upgrade)
    upgrade.set_defaults(handler=_upgrade)

    downgrade = commands.add_parser("downgrade", help="migrate back to REVISION ('base' drops every table)")
    downgrade.add_argument("revision")
    add_database_option(downgrade)
    downgrade.set_defaults(handler=_downgrade)


def _upgrade(args: argparse.Namespace) -> int:
    migrate.upgrade(database_url(args), args.revision)
    return 0


def _downgrade(args: argparse.Namespace) -> int:
    migrate.downgrade(database_url(args), args.revision)
    return 0
