"""Engines: URL normalisation (multi-host PostgreSQL URLs included), and the settings of each
backend: SQLite's that let concurrent writers wait, MySQL's that let one statement commit alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from ..domain.errors import InvalidInputError
from .errors import Failure, classify

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./idmanager.db"
# SQLITE_READONLY, SQLITE_CANTOPEN (no write access to the folder for the WAL files).
_READ_ONLY_CODES = (8, 14)
SQLITE_BUSY_TIMEOUT_S = 30.0

_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite", "mysql": "aiomysql"}
_SYNC_DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite", "mysql": "pymysql"}
# MySQL dialects whose connections are in autocommit mode and begin transactions explicitly.
_EXPLICIT_BEGIN: weakref.WeakSet[Any] = weakref.WeakSet()
_ALONE = "idmanager_alone"  # execution option: each statement commits by itself

# libpq's multi-host form, postgresql://user:password@h1:p1,h2:p2/db?...: the authority holds a
# comma. User and password as SQLAlchemy reads them (a password may hold anything but "@").
_LIBPQ_HOSTS = re.compile(
    r"(?P<head>postgresql(?:\+\w+)?://(?:[^:/@]*(?::[^@]*)?@)?)"
    r"(?P<hosts>[^/?#]*,[^/?#]*)(?P<path>/[^?#]*)?(?:\?(?P<query>[^#]*))?",
    re.DOTALL,
)
_HOST = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?")
DEFAULT_PG_PORT = "5432"


def _query_hosts(url: str) -> str:
    """Rewrite libpq's ``@h1:p1,h2:p2/db`` as ``/db?host=h1,h2&port=p1,p2``.

    SQLAlchemy reads the comma form as one host with the port ``p1,h2:p2`` (and fails); the
    query form is libpq's own too, and both drivers' dialects accept it. A host without a port
    gets PostgreSQL's default one (asyncpg needs a port for every host).
    """
    found = _LIBPQ_HOSTS.fullmatch(url)
    if found is None:
        return url
    hosts, ports = [], []
    for item in found["hosts"].split(","):
        host = _HOST.fullmatch(item)
        if host is None:
            raise ValueError(f"Invalid host {item!r} in the database URL's host list")
        hosts.append(host["ipv6"] or host["name"])
        ports.append(host["port"] or DEFAULT_PG_PORT)
    query = found["query"] or ""
    if {name for name, _ in parse_qsl(query)} & {"host", "port"}:
        raise ValueError("The database URL gives hosts both before the path and in its query")
    listed = f"host={quote(','.join(hosts), safe=',:')}&port={','.join(ports)}"
    return f"{found['head']}{found['path'] or '/'}?{f'{query}&' if query else ''}{listed}"


def _hosts(url: URL) -> int:
    """Return how many hosts a PostgreSQL URL names (its query's ``host`` lists included)."""
    listed = url.query.get("host")
    if listed is None:
        return 1
    names = [listed] if isinstance(listed, str) else list(listed)
    return sum(len(name.split(",")) for name in names)


def _url(url: str | URL, drivers: dict[str, str]) -> URL:
    parsed = make_url(_query_hosts(url) if isinstance(url, str) else url)
    backend = parsed.get_backend_name()
    if backend == "mariadb":
        backend = "mysql"
    if backend not in drivers:
        raise ValueError(
            f"Unsupported database {parsed.drivername!r}: use postgresql, sqlite or mysql/mariadb"
        )
    if (
        backend == "postgresql"
        and _hosts(parsed) > 1
        and "target_session_attrs" not in parsed.query
    ):
        # Several hosts are a primary and its standbys: connect to the one that takes writes.
        # Without this, a standby listed first (or a failover) gets every allocation refused.
        parsed = parsed.update_query_dict({"target_session_attrs": "read-write"})
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


def configure_mysql(engine: Engine, *, explicit_begin: bool = True) -> None:
    """Make MySQL/MariaDB sessions write and read timestamps in UTC, and let one statement
    commit by itself.

    Its ``DATETIME`` columns have no time zone and ``CURRENT_TIMESTAMP`` is in the session's
    zone (the server's by default); the repository reads them back as UTC.

    With ``explicit_begin`` (the connections are opened in autocommit mode), transactions
    start with an explicit BEGIN, and a connection of :func:`autocommit_view` runs each
    statement alone, committed by the server. Switching a connection in and out of
    autocommit through its isolation level would cost three round trips per use; this costs
    none. A statement run alone is the one Galera may retry itself on a certification
    conflict (``wsrep_retry_autocommit``).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET time_zone = '+00:00'")
        cursor.close()

    if not explicit_begin:
        return
    _EXPLICIT_BEGIN.add(engine.dialect)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        if options.get(_ALONE):
            # Back in autocommit mode if an isolation level set on this connection once
            # turned it off (its reset does); it stays on otherwise.
            dbapi_connection = conn.connection.dbapi_connection
            if not dbapi_connection.get_autocommit():
                dbapi_connection.autocommit(True)
            return
        conn.exec_driver_sql("BEGIN")


def autocommit_view(engine: Engine) -> Engine | None:
    """Return a view of ``engine`` whose statements commit themselves, where that is cheap.

    A single statement is atomic by itself: run alone, it saves the BEGIN and COMMIT round
    trips (and on Galera, the server retries it after a conflict). None for a MySQL engine
    not made by :func:`create_engine`, whose connections would have to switch modes.
    """
    if engine.dialect.name in ("postgresql", "sqlite"):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    if engine.dialect in _EXPLICIT_BEGIN:
        return engine.execution_options(**{_ALONE: True})
    return None


def drop_read_only_connections(engine: Engine) -> None:
    """Drop a pooled connection that finds its server read-only (and the pool with it).

    With several hosts, the server a connection was opened to may have become a standby, or
    been fenced off, since; a new connection goes to the host that takes writes now.
    """

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if classify(context.original_exception) is Failure.READ_ONLY:
            context.is_disconnect = True


def _configure(engine: Engine, kwargs: dict[str, Any]) -> None:
    backend = engine.dialect.name
    if backend == "sqlite":
        configure_sqlite(engine)
    elif backend in ("mysql", "mariadb"):
        configure_mysql(engine, explicit_begin=kwargs.get("isolation_level") != "AUTOCOMMIT")
    elif backend == "postgresql" and _hosts(engine.url) > 1:
        drop_read_only_connections(engine)


def _options(url: URL, kwargs: dict[str, Any]) -> dict[str, Any]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        _prepare_sqlite_file(url)
    elif backend == "mysql" and kwargs.get("isolation_level") != "AUTOCOMMIT":
        # Opened in autocommit mode (the server's default: no round trip to set it);
        # transactions begin explicitly (configure_mysql).
        kwargs.setdefault("connect_args", {}).setdefault("autocommit", True)
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
    _configure(engine, kwargs)
    return engine


def create_async_engine(url: str | URL = DEFAULT_DATABASE_URL, **kwargs: Any) -> AsyncEngine:
    """Create an async engine for ``url`` (SQLite set up for concurrent writers, MySQL for UTC)."""
    parsed = async_url(url)
    engine = sa_create_async_engine(parsed, **_options(parsed, kwargs))
    _configure(engine.sync_engine, kwargs)
    return engine
