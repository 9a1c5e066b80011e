"""Engines: URL normalisation and the SQLite settings that let concurrent writers wait."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./idmanager.db"
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
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, open transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # In autocommit mode each statement is its own transaction: open none.
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE")


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
    return kwargs


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
