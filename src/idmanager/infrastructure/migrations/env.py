"""Alembic environment: migrations run on a sync connection of the configured URL.

The URL is, first found: ``alembic -x url=...``, the ``IDMANAGER_DATABASE_URL`` environment
variable, then ``sqlalchemy.url`` of the configuration (``idmanager migrate`` sets that one).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import pool

from idmanager.infrastructure.database import create_engine
from idmanager.infrastructure.migrate import VERSION_TABLE
from idmanager.infrastructure.models import Base

config = context.config


def run_migrations() -> None:
    # `idmanager migrate` names its URL itself; the environment is for `alembic` users.
    from_environment = None if config.attributes.get("idmanager") else "IDMANAGER_DATABASE_URL"
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or (os.environ.get(from_environment) if from_environment else None)
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("No database URL: set IDMANAGER_DATABASE_URL or pass -x url=...")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            version_table=VERSION_TABLE,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
