"""What the records commands share: the --database-url option and a friendly missing-schema error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from service.db.session import DEFAULT_DATABASE_URL, database_url_from_env, make_engine

__all__ = ["add_database_option", "database_url", "open_engine"]


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="database URL (default: KDOCT_DATABASE_URL from the environment or .env, "
        f"else {DEFAULT_DATABASE_URL})",
    )


def database_url(args: argparse.Namespace) -> str:
    return args.database_url or database_url_from_env()


@contextmanager
def open_engine(args: argparse.Namespace) -> Iterator[Engine]:
    engine = make_engine(database_url(args))
    try:
        yield engine
    except (OperationalError, ProgrammingError) as exc:
        message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        missing_schema = "no such table" in message or "does not exist" in message
        hint = " (run `python -m service db upgrade` first)" if missing_schema else ""
        sys.exit(f"error: database {engine.url.render_as_string(hide_password=True)}: {message}{hint}")
    finally:
        engine.dispose()
