"""Apply the Alembic migrations: the only thing that creates the schema."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.engine import URL

from ..domain.errors import StorageError
from .database import DEFAULT_DATABASE_URL, sync_url
from .errors import translate_errors

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# IdManager's own version table: the application sharing the database may use Alembic too.
VERSION_TABLE = "idmanager_alembic_version"


def alembic_config(url: str | URL | None = None) -> Config:
    """Return an Alembic configuration for ``url`` (default: ``IDMANAGER_DATABASE_URL``)."""
    from alembic.config import Config  # imported here: every CLI call would pay for it

    url = url or os.environ.get("IDMANAGER_DATABASE_URL") or DEFAULT_DATABASE_URL
    config = Config()
    # The URL below is the one to use, whatever the environment says.
    config.attributes["idmanager"] = True
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic runs synchronously: use the backend's sync driver whatever the URL names.
    rendered = sync_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def migrate(url: str | URL | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (safe to run again, and at once)."""
    from alembic import command
    from alembic.util import CommandError

    config = alembic_config(url)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with translate_errors():
                try:
                    command.upgrade(config, revision)
                except CommandError as exc:
                    raise StorageError(f"Migration failed: {exc}") from exc
            return
        except StorageError as exc:
            if attempt == _ATTEMPTS or not _lost_race(exc):
                raise
        time.sleep(0.2 * attempt)


def revisions(connection: Connection) -> tuple[str | None, str | None]:
    """Return the revision the database is at (None: never migrated) and the newest one."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with translate_errors():
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        current = context.get_current_revision()
    return current, ScriptDirectory(str(MIGRATIONS)).get_current_head()


# Replicas that start together migrate one database at once: all but one fail creating what
# the winner just created (PostgreSQL rolls the loser's DDL back; MySQL's DDL is not
# transactional, but the loser stops at its first CREATE, before the winner's). Once the
# winner has finished, the upgrade is a no-op, so the losers retry.
_ATTEMPTS = 5
# The last: the winner moved the version table on while the loser was applying the same step.
_RACE_MARKERS = (
    "already exists",
    "duplicate key",
    "duplicate entry",
    "duplicate column",
    "expected to match one row",
)


def _lost_race(exc: StorageError) -> bool:
    text = str(exc.__cause__ or exc).lower()
    return any(marker in text for marker in _RACE_MARKERS)
