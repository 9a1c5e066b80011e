"""Read a seed-era ``id_managers`` table from any database, without writing to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..domain.errors import InvalidInputError, StorageError
from .database import create_engine, sync_url
from .errors import Failure, classify

DEFAULT_TABLE = "id_managers"
# (prefix, latest_id, is_active) as the seed stored them.
LegacyValues = tuple[str | None, str | None, bool]


def source_engine(url: str | URL, **options: Any) -> Engine:
    """Create an engine that reads the seed's database (a SQLite file is opened read-only).

    Raises:
        InvalidInputError: a SQLite database that is not an existing file.
    """
    parsed = sync_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, **options)
    # Read-only, and without IdManager's SQLite settings: those would write to the seed's
    # file (WAL mode, BEGIN IMMEDIATE), and connecting would create a misspelt one.
    path = parsed.database
    if not path or path == ":memory:" or path.startswith("file:"):
        raise InvalidInputError("The seed's SQLite database must be given as a file path")
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"The seed's SQLite database {path} does not exist")
    read_only = parsed.set(
        database=file.resolve().as_uri(), query={**parsed.query, "mode": "ro", "uri": "true"}
    )
    return sa.create_engine(read_only, **options)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _flag(value: object) -> bool:
    if value is None:
        return True  # the seed's default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return bool(value)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def read_legacy_rows(engine: Engine, table: str = DEFAULT_TABLE) -> list[LegacyValues]:
    """Read the seed's table (``prefix``, ``latest_id``, ``is_active``), sorted by prefix.

    ``table`` may be qualified by a schema (``legacy.id_managers``).

    Raises:
        InvalidInputError: the table or its columns cannot be read.
        StorageError: the source database cannot be reached.
    """
    schema, _, name = table.strip().rpartition(".")
    if not name:
        raise InvalidInputError("The seed's table name cannot be empty")
    source = sa.table(
        name, sa.column("prefix"), sa.column("latest_id"), sa.column("is_active"), schema=schema
    )
    where = engine.url.render_as_string(hide_password=True)
    try:
        connection = engine.connect()
    except SQLAlchemyError as exc:
        raise StorageError(f"Source database unavailable ({where}): {_first_line(exc)}") from exc
    with connection:
        try:
            result = connection.execute(
                sa.select(source.c.prefix, source.c.latest_id, source.c.is_active)
            ).all()
        except DBAPIError as exc:
            line = _first_line(exc)
            if exc.connection_invalidated or classify(exc) is Failure.UNAVAILABLE:
                raise StorageError(f"Source database unavailable ({where}): {line}") from exc
            hint = (
                "; is it IdManager's own table rather than the seed's?"
                if "latest_id" in line
                else ""
            )
            raise InvalidInputError(
                f"Cannot read the seed's table {table!r} in {where}: {line}{hint}"
            ) from exc
    rows = [(_text(p), _text(latest), _flag(active)) for p, latest, active in result]
    # Sorted here, not by the database: the same report whatever the source's collation.
    return sorted(rows, key=lambda row: (row[0] is None, row[0] or ""))
