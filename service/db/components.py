"""The records side of the service, built in one place for the app's lifespan: engine, session
factory, durable writer (the PredictionSink) and the API-key authenticator."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kdoct.errors import ConfigError
from service import metrics
from service.db.chain import ChainLink
from service.db.observer import MetricsObserver
from service.db.session import is_postgresql, make_engine, make_sessionmaker
from service.db.writer import DurableWriter
from service.security import Authenticator

__all__ = ["Records", "build_records"]

log = logging.getLogger(__name__)


@dataclass
class Records:
    engine: Engine
    sessions: sessionmaker[Session]
    writer: DurableWriter
    authenticator: Authenticator

    async def close(self) -> None:
        """Drain the writer, then let go of the database."""
        await self.writer.stop()
        self.engine.dispose()


def build_records(
    database_url: str,
    spool_dir: str | os.PathLike[str],
    *,
    auth_enabled: bool = True,
    queue_size: int = 1024,
    batch_size: int = 256,
    statement_timeout_s: float | None = None,
    lock_timeout_s: float | None = None,
    record_deadline_s: float | None = None,
    on_append: Callable[[ChainLink], None] | None = None,
) -> Records:
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
    writer = DurableWriter(
        engine,
        Path(spool_dir),
        queue_size=queue_size,
        batch_size=batch_size,
        record_deadline_s=record_deadline_s,
        observer=MetricsObserver(),
        on_append=on_append,
    )
    authenticator = Authenticator(
        sessions if auth_enabled else None,
        enabled=auth_enabled,
        on_failure=lambda reason: metrics.AUTH_FAILURES.labels(reason=reason).inc(),
    )
    return Records(engine=engine, sessions=sessions, writer=writer, authenticator=authenticator)
