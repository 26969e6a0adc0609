"""Wait until the database in KDOCT_DATABASE_URL accepts connections, or give up with a clear error.

Used by docker/entrypoint.sh before `alembic upgrade head`: in docker compose PostgreSQL may still be
starting (or recovering) when the API container starts. A file database (SQLite) needs no waiting.
Exit status: 0 when reachable, 1 when the deadline passed, 2 for an unusable URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

log = logging.getLogger("kdoct.wait_for_db")


def wait_for_database(url: str, timeout_s: float, interval_s: float = 1.0) -> bool:
    """True once `SELECT 1` succeeds on `url`; False when `timeout_s` passes first."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return True
    shown = parsed.render_as_string(hide_password=True)  # never log the password
    engine = create_engine(parsed, pool_pre_ping=False, connect_args={"connect_timeout": 3})
    deadline = time.monotonic() + timeout_s
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                log.info("database %s reachable after %d attempt(s)", shown, attempt)
                return True
            except OperationalError as error:
                reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.error("database %s still unreachable after %.0f s: %s", shown, timeout_s, reason)
                    return False
                log.info("waiting for database %s (%s)", shown, reason)
                time.sleep(min(interval_s, remaining))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("KDOCT_DATABASE_URL", ""), help="default: $KDOCT_DATABASE_URL"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait before giving up")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between attempts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.url:
        log.info(
            "KDOCT_DATABASE_URL is not set: the service uses its embedded SQLite default, nothing to wait for"
        )
        return 0
    try:
        reachable = wait_for_database(args.url, args.timeout, args.interval)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        log.error(
            "KDOCT_DATABASE_URL is not a usable database URL (%s): fix it in .env", type(error).__name__
        )
        return 2
    return 0 if reachable else 1


if __name__ == "__main__":
    sys.exit(main())
