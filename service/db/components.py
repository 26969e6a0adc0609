"""The records side of the service, built in one place for the app's lifespan: engine, session
factory and durable writer (the PredictionSink). The API-key authenticator (service/security.py) is
built by the app from the session factory: the records never depend on request handling."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kdoct.errors import ConfigError
from service.audit_key import AuditKey
from service.db.chain import ChainLink
from service.db.observer import MetricsObserver
from service.db.session import is_postgresql, make_engine, make_sessionmaker
from service.db.spool_first import SpoolFirstWriter
from service.db.writer import DurableWriter

__all__ = ["Records", "build_records"]

log = logging.getLogger(__name__)


@dataclass
class Records:
    engine: Engine
    sessions: sessionmaker[Session]
    writer: DurableWriter | SpoolFirstWriter  # the PredictionSink


def build_records(
    database_url: str,
    spool_dir: str | os.PathLike[str],
    *,
    chain_key: AuditKey,
    auth_enabled: bool = True,
    queue_size: int = 1024,
    batch_size: int = 256,
    statement_timeout_s: float | None = None,
    lock_timeout_s: float | None = None,
    record_ack: Literal["spool", "database"] = "database",
    record_deadline_s: float | None = None,
    on_append: Callable[[ChainLink], None] | None = None,
) -> Records:
    """record_ack: when an answer may go out: once its rows are fsync'd to the local journal and the
    insert follows (spool, service/db/spool_first.py), or once they are committed (database)."""
    if not auth_enabled:
        if is_postgresql(database_url):
            raise ConfigError(
                "KDOCT_AUTH=disabled is for the local SQLite demo only and is refused with PostgreSQL: "
                "enable auth and create a key with `python -m service apikey create NAME --scopes ...`"
            )
        log.warning(
            "AUTHENTICATION IS DISABLED (KDOCT_AUTH=disabled): anyone who reaches this port may use it"
        )
    engine = make_engine(database_url, statement_timeout_s=statement_timeout_s, lock_timeout_s=lock_timeout_s)
    sessions = make_sessionmaker(engine)
    common = {
        "chain_key": chain_key,
        "queue_size": queue_size,
        "batch_size": batch_size,
        "observer": MetricsObserver(),
        "on_append": on_append,
    }
    if record_ack == "spool":
        writer: DurableWriter | SpoolFirstWriter = SpoolFirstWriter(engine, Path(spool_dir), **common)
    else:
        writer = DurableWriter(engine, Path(spool_dir), record_deadline_s=record_deadline_s, **common)
    return Records(engine=engine, sessions=sessions, writer=writer)
