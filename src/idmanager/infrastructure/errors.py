"""Database errors, classified once: by SQLSTATE (PostgreSQL), error number (MySQL/MariaDB)
or result code (SQLite), never by the wording of a message where a code exists.

Every other module calls :func:`translate_errors` (or :func:`classify`) rather than looking at
driver exceptions itself. The caller's own commit, once IdManager has worked in its transaction,
is translated too (:func:`watch_commit`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..domain.errors import (
    BusyError,
    IdManagerError,
    InvalidInputError,
    StorageError,
    TransactionConflictError,
)


class Failure(Enum):
    """What a database error means for the caller."""

    MISSING_SCHEMA = "the schema is not migrated"
    LOCK_TIMEOUT = "a lock wait timed out"  # the row is held by another transaction
    CONFLICT = "a conflict with a concurrent transaction"  # rolled back; retrying is safe
    READ_ONLY = "the database is read-only"  # a standby, or a read-only file
    OUT_OF_RANGE = "a value out of range"
    DUPLICATE = "a duplicate key"
    UNAVAILABLE = "the database is unavailable"  # connection or server failure
    REFUSED = "the database refused the statement"


# PostgreSQL SQLSTATEs; whole classes end in "*".
_PG = {
    "42P01": Failure.MISSING_SCHEMA,  # undefined_table
    "55P03": Failure.LOCK_TIMEOUT,  # lock_not_available (lock_timeout, NOWAIT)
    "57014": Failure.LOCK_TIMEOUT,  # query_canceled (statement_timeout)
    "40001": Failure.CONFLICT,  # serialization_failure
    "40P01": Failure.CONFLICT,  # deadlock_detected
    "25006": Failure.READ_ONLY,  # read_only_sql_transaction (a standby)
    "22003": Failure.OUT_OF_RANGE,  # numeric_value_out_of_range
    "23505": Failure.DUPLICATE,  # unique_violation
    "08*": Failure.UNAVAILABLE,  # connection_exception
    "57P*": Failure.UNAVAILABLE,  # admin_shutdown, crash_shutdown, cannot_connect_now
    "53300": Failure.UNAVAILABLE,  # too_many_connections
    "58*": Failure.UNAVAILABLE,  # system_error (I/O)
}
# MySQL/MariaDB error numbers (server 1xxx, client 2xxx).
_MYSQL = {
    1146: Failure.MISSING_SCHEMA,  # ER_NO_SUCH_TABLE
    1205: Failure.LOCK_TIMEOUT,  # ER_LOCK_WAIT_TIMEOUT
    3572: Failure.LOCK_TIMEOUT,  # ER_LOCK_NOWAIT
    1213: Failure.CONFLICT,  # ER_LOCK_DEADLOCK; Galera's certification failure too
    1047: Failure.CONFLICT,  # WSREP has not yet prepared node for application use
    1180: Failure.CONFLICT,  # error during COMMIT (Galera)
    1290: Failure.READ_ONLY,  # --read-only
    1792: Failure.READ_ONLY,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1836: Failure.READ_ONLY,  # ER_READ_ONLY_MODE
    1690: Failure.OUT_OF_RANGE,  # ER_DATA_OUT_OF_RANGE
    1264: Failure.OUT_OF_RANGE,  # ER_WARN_DATA_OUT_OF_RANGE
    1062: Failure.DUPLICATE,  # ER_DUP_ENTRY
    1040: Failure.UNAVAILABLE,  # too many connections
    1053: Failure.UNAVAILABLE,  # server shutdown in progress
    1927: Failure.UNAVAILABLE,  # connection killed
    2002: Failure.UNAVAILABLE,  # cannot connect (socket)
    2003: Failure.UNAVAILABLE,  # cannot connect (TCP)
    2006: Failure.UNAVAILABLE,  # server has gone away
    2013: Failure.UNAVAILABLE,  # lost connection during query
    2055: Failure.UNAVAILABLE,  # lost connection (system error)
    4031: Failure.UNAVAILABLE,  # disconnected by the server (idle)
}
# SQLite primary result codes (extended codes carry them in their low byte).
_SQLITE = {
    5: Failure.LOCK_TIMEOUT,  # SQLITE_BUSY: the busy timeout passed
    6: Failure.LOCK_TIMEOUT,  # SQLITE_LOCKED
    8: Failure.READ_ONLY,  # SQLITE_READONLY
    10: Failure.UNAVAILABLE,  # SQLITE_IOERR
    13: Failure.UNAVAILABLE,  # SQLITE_FULL
    14: Failure.UNAVAILABLE,  # SQLITE_CANTOPEN
    19: Failure.DUPLICATE,  # SQLITE_CONSTRAINT (the only constraint IdManager can break)
}
_SQLITE_CONSTRAINT_CHECK = 275  # SQLITE_CONSTRAINT_CHECK: not a duplicate


def _driver_error(exc: BaseException) -> BaseException:
    return getattr(exc, "orig", None) or exc


def _first_line(exc: BaseException) -> str:
    text = str(_driver_error(exc)).strip()
    return text.splitlines()[0] if text else type(_driver_error(exc)).__name__


def _pg(orig: BaseException) -> Failure | None:
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if not isinstance(state, str):
        return None
    found = _PG.get(state) or _PG.get(state[:2] + "*") or _PG.get(state[:3] + "*")
    return found or Failure.REFUSED


def _mysql(orig: BaseException) -> Failure | None:
    number = _mysql_code(orig)
    if number is None:
        return None
    if 2000 <= number < 3000 and number not in _MYSQL:
        return Failure.UNAVAILABLE  # the client library's own errors: the connection
    return _MYSQL.get(number, Failure.REFUSED)


def _mysql_code(orig: BaseException) -> int | None:
    args = getattr(orig, "args", ())
    number = args[0] if args else None
    return number if type(number) is int and 1000 <= number < 5000 else None


def _sqlite(orig: BaseException, text: str) -> Failure | None:
    code = getattr(orig, "sqlite_errorcode", None)
    if type(code) is not int:
        return None
    if code == 1 and "no such table" in text:
        # SQLITE_ERROR is SQLite's one code for every refused statement: only its
        # message tells a missing table from a typo.
        return Failure.MISSING_SCHEMA
    if code == _SQLITE_CONSTRAINT_CHECK:
        return Failure.REFUSED
    return _SQLITE.get(code & 0xFF, Failure.REFUSED)


def classify(exc: BaseException) -> Failure:
    """Return what a database (or connection) error means."""
    orig = _driver_error(exc)
    # MySQL first: PyMySQL errors carry a generic SQLSTATE beside their precise number.
    found = _mysql(orig) or _sqlite(orig, _first_line(exc)) or _pg(orig)
    if found is not None:
        return found
    # No code: a failure below the SQL level (a socket, a pool, a driver that lost the
    # connection mid-statement) is an outage; anything else the database refused.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Failure.UNAVAILABLE
    unavailable = (OperationalError, InterfaceError, PoolTimeoutError, OSError, TimeoutError)
    if isinstance(exc, unavailable) or isinstance(orig, OSError | TimeoutError | EOFError):
        return Failure.UNAVAILABLE
    if _connection_class(orig):
        return Failure.UNAVAILABLE
    return Failure.REFUSED


def _connection_class(orig: BaseException) -> bool:
    """Return True for a driver's own error of the connection, raised without a code.

    Read straight from a driver (no SQLAlchemy around it), a lost connection is psycopg's
    ``OperationalError`` or ``InterfaceError`` and asyncpg's ``InterfaceError`` (its
    ``ConnectionDoesNotExistError``), with no SQLSTATE: the DB-API's names for "the
    connection", which every driver keeps. asyncpg's ``InternalClientError`` too: its
    protocol in a state it cannot leave ("cannot switch to state 12; another operation (2) is
    in progress"), as when the server ended an idle backend (``pg_terminate_backend``, a
    restart) and the FATAL message arrived before the closed socket was noticed.
    """
    names = ("OperationalError", "InterfaceError", "InternalClientError")
    return any(c.__name__ in names for c in type(orig).__mro__)


def as_domain_error(exc: BaseException) -> IdManagerError:
    """Return the domain error for a database error (to raise ``from`` it)."""
    failure, line = classify(exc), _first_line(exc)
    name = type(_driver_error(exc)).__name__
    if failure is Failure.MISSING_SCHEMA:
        return StorageError(
            "Database not migrated: the id_managers table does not exist; "
            "run `idmanager migrate` first"
        )
    if failure is Failure.LOCK_TIMEOUT:
        return BusyError(
            "The sequence is busy: another transaction holds it past the wait allowed "
            f"({name}: {line})"
        )
    if failure is Failure.CONFLICT:
        return TransactionConflictError(
            f"A concurrent transaction won a conflict; nothing was allocated ({name}: {line})"
        )
    if failure is Failure.OUT_OF_RANGE:
        # A value the database cannot hold (a number past 64 bits): bad input, not an outage.
        return InvalidInputError(f"A value is out of range for the database: {line}")
    if failure is Failure.READ_ONLY:
        # A standby during a failover, or a read-only file: reads go on, writes wait.
        return StorageError(f"Database read-only: {name}: {line}")
    if failure is Failure.UNAVAILABLE:
        return StorageError(f"Database unavailable: {name}: {line}")
    return StorageError(f"Database error: {name}: {line}")


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn database and connection failures into domain errors, once, here."""
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise as_domain_error(exc) from exc


# Connections whose current transaction IdManager worked in, with that transaction's id (a
# transaction cannot be weakly referenced); and the dialects listened to.
_JOINED: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()
_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()


def watch_commit(connection: Connection) -> None:
    """Translate the failures that end ``connection``'s current transaction, at any statement
    or at its commit, from now until it ends.

    IdManager has worked in the caller's transaction, but the caller commits it, after
    IdManager's call has returned: a conflict found then (Galera certifies a transaction only
    at commit, and aborts a local one holding a row that a replicated one needs) would reach
    the caller as a raw driver error. It becomes a :class:`TransactionConflictError` (roll
    back, run the transaction again), and a lost connection a :class:`StorageError`, as
    IdManager's own statements report them.
    """
    dialect = connection.dialect
    if dialect not in _WATCHED:
        _WATCHED.add(dialect)
        event.listen(connection.engine, "handle_error", _in_joined_transaction)
    transaction = connection.get_transaction()
    if transaction is not None:
        _JOINED[connection] = id(transaction)


def _in_joined_transaction(context: Any) -> None:
    connection = context.connection
    if connection is None:
        return
    transaction = connection.get_transaction()
    if transaction is None or _JOINED.get(connection) != id(transaction):
        return
    exc = context.sqlalchemy_exception or context.original_exception
    failure = classify(exc)
    if failure is Failure.UNAVAILABLE and context.statement is None:
        # No statement: the commit (or the rollback) itself.
        name, line = type(_driver_error(exc)).__name__, _first_line(exc)
        raise StorageError(
            f"Database unavailable as the transaction ended; whether it was committed is "
            f"unknown, and no ID can be committed twice either way ({name}: {line})"
        )
    if failure in (Failure.CONFLICT, Failure.UNAVAILABLE):
        raise as_domain_error(exc)
