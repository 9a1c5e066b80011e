"""Apply the Alembic migrations: the only thing that creates the schema."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from .database import DEFAULT_DATABASE_URL, sync_url
from .repository import translate_errors

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str | URL | None = None) -> Config:
    """Return an Alembic configuration for ``url`` (default: ``IDMANAGER_DATABASE_URL``)."""
    url = url or os.environ.get("IDMANAGER_DATABASE_URL") or DEFAULT_DATABASE_URL
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic runs synchronously: use the backend's sync driver whatever the URL names.
    rendered = sync_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrate(url: str | URL | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (safe to run again)."""
    with translate_errors():
        command.upgrade(alembic_config(url), revision)
