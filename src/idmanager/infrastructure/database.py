"""Engines: URL normalisation and the SQLite settings that let concurrent writers wait."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from ..domain.errors import InvalidInputError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./idmanager.db"
# SQLITE_READONLY, SQLITE_CANTOPEN (no write access to the folder for the WAL files).
_READ_ONLY_CODES = (8, 14)
SQLITE_BUSY_TIMEOUT_S = 30.0

_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite", "mysql": "aiomysql"}
_SYNC_DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite", "mysql": "pymysql"}


def _url(url: str | URL, drivers: dict[str, str]) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "mariadb":
        backend = "mysql"
    if backend not in drivers:
        raise ValueError(
            f"Unsupported database {parsed.drivername!r}: use postgresql, sqlite or mysql/mariadb"
        )
    return parsed.set(drivername=f"{backend}+{drivers[backend]}")


def async_url(url: str | URL) -> URL:
    """Return ``url`` with the async driver of its backend (asyncpg, aiosqlite, aiomysql)."""
    return _url(url, _ASYNC_DRIVERS)


def sync_url(url: str | URL) -> URL:
    """Return ``url`` with the sync driver of its backend (psycopg, sqlite3, pymysql)."""
    return _url(url, _SYNC_DRIVERS)


def configure_sqlite(engine: Engine) -> None:
    """Make a SQLite engine safe for concurrent writers.

    WAL lets readers run beside the writer; the busy timeout makes writers wait for each
    other; ``BEGIN IMMEDIATE`` takes the write lock at the start of a transaction, so a
    writer never has to upgrade a read lock (which SQLite refuses at once with "database is
    locked", whatever the timeout).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, open transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _READ_ONLY_CODES:
                raise
            # A read-only file (or folder): serve reads, and let writes be refused.
            record.info["idmanager_read_only"] = True
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # In autocommit mode each statement is its own transaction: open none.
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return
        # A read-only database cannot take the write lock: a plain transaction reads.
        read_only = conn.info.get("idmanager_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def configure_mysql(engine: Engine) -> None:
    """Make MySQL/MariaDB sessions write and read timestamps in UTC.

    Its ``DATETIME`` columns have no time zone and ``CURRENT_TIMESTAMP`` is in the session's
    zone (the server's by default); the repository reads them back as UTC.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET time_zone = '+00:00'")
        cursor.close()


def _configure(engine: Engine) -> None:
    backend = engine.dialect.name
    if backend == "sqlite":
        configure_sqlite(engine)
    elif backend in ("mysql", "mariadb"):
        configure_mysql(engine)


def _options(url: URL, kwargs: dict[str, Any]) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        _prepare_sqlite_file(url)
    return kwargs


def sqlite_path(url: URL) -> Path | None:
    """Return the file of a SQLite URL, or None for an in-memory or URI database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _prepare_sqlite_file(url: URL) -> None:
    """Refuse a missing folder at once; create a new database file readable by its owner only.

    SQLite would otherwise create the file with the process's umask (often world-readable),
    and a missing folder would only show as failed connections, forever.
    """
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise InvalidInputError(f"The SQLite database's folder {folder} does not exist")
    with contextlib.suppress(FileExistsError):  # created meanwhile by another process
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def create_engine(url: str | URL = DEFAULT_DATABASE_URL, **kwargs: Any) -> Engine:
    """Create a sync engine for ``url`` (SQLite set up for concurrent writers, MySQL for UTC)."""
    parsed = sync_url(url)
    engine = sa_create_engine(parsed, **_options(parsed, kwargs))
    _configure(engine)
    return engine


def create_async_engine(url: str | URL = DEFAULT_DATABASE_URL, **kwargs: Any) -> AsyncEngine:
    """Create an async engine for ``url`` (SQLite set up for concurrent writers, MySQL for UTC)."""
    parsed = async_url(url)
    engine = sa_create_async_engine(parsed, **_options(parsed, kwargs))
    _configure(engine.sync_engine)
    return engine
