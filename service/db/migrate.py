"""Run the Alembic migrations (alembic/ at the repository root) from Python."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command
from kdoct.errors import ConfigError
from service.db.session import normalise_url

__all__ = ["ALEMBIC_INI", "alembic_config", "downgrade", "upgrade"]

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    if not ALEMBIC_INI.is_file():
        raise ConfigError(
            f"{ALEMBIC_INI} not found: run from a checkout of the repository (alembic/ is not packaged)"
        )
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = normalise_url(database_url).render_as_string(hide_password=False)
    # The caller's logging stays as it is (alembic.ini would reset it).
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
