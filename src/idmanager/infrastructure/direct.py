"""The own-transaction allocation on the driver connection: one statement, nothing around it.

An allocation in a transaction of its own is one atomic statement (``UPDATE … RETURNING``, or
PostgreSQL's keyed allocation, one data-modifying CTE). Run in autocommit it is committed
before the database answers, so it needs no Session, no SQLAlchemy ``Connection``, no BEGIN or
COMMIT: this runs the repository's own statement, compiled once per engine to the driver's
text, on the driver connection of a connection checked out of the caller's engine (its pool
size, TLS, ``server_settings`` and connect hooks hold), and reads back only what the answer
needs.

- asyncpg: ``fetchrow`` outside a transaction (asyncpg commits it before it answers), through
  asyncpg's own statement cache (``statement_cache_size=0``, for pgbouncer, is respected);
- psycopg: autocommit on for the one statement, then back as the pool handed it out;
- sqlite3: with ``isolation_level`` None the statement commits when stepped to its end. A
  file database gets a connection per thread, made by the engine (its connect hook sets WAL
  and the busy timeout) and detached from the pool: checking one in costs as much as the
  statement. aiosqlite: one such connection of our own, one hop to its thread per ID.

A failure is classified as :func:`.errors.as_domain_error` does; a connection the failure may
have broken (lost, cancelled mid-statement, read-only since a failover) is thrown away, never
returned to the pool. No row back means the sequence is missing, inactive or full: the caller
takes the full path, which says which.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import MissingGreenlet, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from ..domain.entity import IdManager
from ..domain.format import MAX_ORDINAL, IdFormat
from ..domain.repository import Claim, KeyAlreadyUsed, allocation_of
from .database import sqlite_path
from .errors import Failure, as_domain_error, classify
from .statements import Statement, named_statement

SYNC_DRIVERS = ("psycopg", "pysqlite")
ASYNC_DRIVERS = ("asyncpg", "aiosqlite")
_ALLOCATE = ("count", "key_scope", "key_prefix", "room")
_REMEMBERING = (*_ALLOCATE, "owner", "idem_key", "fingerprint", "status")
_FORMATS: dict[tuple[str, int, int], IdFormat] = {}
T = TypeVar("T")

# Bumped in a child process after fork: a connection of the parent is never used there.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


_ALLOCATING: weakref.WeakKeyDictionary[Dialect, Statement] = weakref.WeakKeyDictionary()


def _allocating(dialect: Dialect) -> Statement:
    """Return the allocation statement compiled for ``dialect`` (once per dialect)."""
    found = _ALLOCATING.get(dialect)
    if found is None:
        statement = named_statement(dialect.name, "allocate_direct")
        found = _ALLOCATING[dialect] = Statement(dialect, statement, _ALLOCATE)
    return found


def on_cursor(connection: Connection) -> bool:
    """Return True when an allocation in ``connection``'s transaction may run on its cursor.

    SQLAlchemy's work around a statement (its execution context, its result) costs several
    times the cursor's own call. The cursor is the one SQLAlchemy would use, in the same
    transaction; only what the engine's user would see of the statement is lost, so an engine
    that logs its statements (``echo``) or listens to them (tracing) keeps SQLAlchemy's path.
    """
    dialect = connection.dialect
    if dialect.name not in ("postgresql", "sqlite") or getattr(connection, "_echo", True):
        return False  # MySQL: no RETURNING on UPDATE; echo: SQLAlchemy logs its statements
    # SQLAlchemy's own gate before it looks at a connection's listeners (looking builds
    # them, on every new connection).
    if not (getattr(connection, "_has_events", True) or connection.engine._has_events):
        return True
    dispatch = connection.dispatch
    return not (dispatch.before_cursor_execute or dispatch.after_cursor_execute)


def allocate_on_cursor(
    connection: Connection, scope: str, prefix: str, count: int
) -> IdManager | None:
    """Allocate in ``connection``'s transaction with one statement on its DB-API cursor.

    The sequence's new state, or None when no row was allocated (missing, inactive, full).
    """
    values = (count, scope, prefix, MAX_ORDINAL - count)
    row = fetch_on_cursor(connection, _allocating(connection.dialect), values)
    return None if row is None else _manager(scope, prefix, row)


def execute_on_cursor(
    connection: Connection, statement: Statement, rows: Sequence[Sequence[Any]]
) -> None:
    """Run ``statement`` once per row of values, in ``connection``'s transaction, on its
    DB-API cursor (one row: a plain execute; more: the driver's executemany)."""

    def execute(cursor: Any) -> None:
        if len(rows) == 1:
            cursor.execute(statement.sql, statement.bind(*rows[0]))
        else:
            cursor.executemany(statement.sql, [statement.bind(*row) for row in rows])

    _with_cursor(connection, execute)


def fetch_on_cursor(connection: Connection, statement: Statement, values: Sequence[Any]) -> Any:
    """Run ``statement`` with ``values`` in ``connection``'s transaction, on its DB-API
    cursor; return its first row (None: it had none)."""

    def fetch(cursor: Any) -> Any:
        cursor.execute(statement.sql, statement.bind(*values))
        return cursor.fetchone()

    return _with_cursor(connection, fetch)


def _with_cursor(connection: Connection, run: Callable[[Any], T]) -> T:
    """Return ``run`` called with a DB-API cursor of ``connection``; translate its failures
    as SQLAlchemy would.

    A lost connection is invalidated, with the pool's older connections, as SQLAlchemy does
    on a disconnect; a cancellation mid-statement leaves the connection in an unknown state:
    invalidated too. A function, not a context manager: it runs in every ORM commit, while a
    sequence is locked, and a generator's context manager costs more than the rest of it.
    """
    try:
        cursor = connection.connection.cursor()
        try:
            return run(cursor)
        finally:
            cursor.close()
    except BaseException as exc:
        errors = _errors_of(connection.dialect)
        lost = isinstance(exc, errors) and classify(exc) is Failure.UNAVAILABLE
        if (lost or not isinstance(exc, Exception)) and not connection.invalidated:
            error = exc if isinstance(exc, Exception) else None
            if lost:
                connection.engine.pool._invalidate(connection.connection, error, _checkin=False)
            connection.invalidate(error)
        if isinstance(exc, errors):
            raise as_domain_error(exc) from exc
        raise


def _errors_of(dialect: Dialect) -> tuple[type[BaseException], ...]:
    """Return what a cursor's call may raise: the DB-API's errors, the pool's, a socket's."""
    dbapi_error: type[BaseException] = dialect.loaded_dbapi.Error
    return (dbapi_error, SQLAlchemyError, OSError, TimeoutError)


def _format(separator: str, letter_width: int, digit_width: int) -> IdFormat:
    key = (separator, letter_width, digit_width)
    found = _FORMATS.get(key)
    if found is None:
        if len(_FORMATS) > 1000:  # a handful exist; bound it whatever a database holds
            _FORMATS.clear()
        found = _FORMATS[key] = IdFormat(separator, letter_width, digit_width)
    return found


def _manager(scope: str, prefix: str, row: Any) -> IdManager:
    """Return the sequence's new state from ``last_value`` and its format."""
    return IdManager(prefix, scope, last_value=row[0], format=_format(row[1], row[2], row[3]))


def _remembered(scope: str, row: Any) -> IdManager:
    ids = allocation_of(row[0])
    return IdManager(ids.prefix, scope, last_value=ids.last, format=ids.format)


def _broken(exc: BaseException, driver_errors: tuple[type[BaseException], ...]) -> bool:
    """Return True when the connection may be unusable after ``exc``: thrown away, then."""
    if not isinstance(exc, driver_errors):
        return True  # cancelled mid-statement, a timeout, a socket: its state is unknown
    return classify(exc) in (Failure.UNAVAILABLE, Failure.READ_ONLY)


def _throw_away(engine: Engine, fairy: PoolProxiedConnection, exc: BaseException) -> None:
    """Throw away a connection that may be broken.

    After a lost connection the pool's other connections, opened before it, are thrown away
    too, as SQLAlchemy does on a disconnect: they were most likely cut with it (a database
    restarted, its backends killed), and each would otherwise fail one request in turn.
    """
    error = exc if isinstance(exc, Exception) else None
    if error is not None and classify(error) is Failure.UNAVAILABLE:
        engine.pool._invalidate(fairy, error)  # the pool's own step on a disconnect
    else:
        fairy.invalidate(error)


def _translated(exc: BaseException, *, claiming: bool = False) -> BaseException:
    """Return the domain error for a driver error (KeyAlreadyUsed for a key's duplicate)."""
    error = as_domain_error(exc)
    if claiming and classify(exc) is Failure.DUPLICATE:
        key_used = KeyAlreadyUsed()
        key_used.__cause__ = error
        return key_used
    return error


def supported(engine: Engine) -> bool:
    """Return True when allocations on ``engine`` may run on its driver connection."""
    dialect = engine.dialect
    if dialect.name not in ("postgresql", "sqlite"):
        return False  # MySQL: no RETURNING on UPDATE, one statement in a transaction
    if dialect.driver == "aiosqlite":
        return _pinnable(engine)  # in memory, each connection would be another database
    return dialect.driver in SYNC_DRIVERS + ASYNC_DRIVERS


def _pinnable(engine: Engine) -> bool:
    """Return True for a SQLite file whose pool lets a connection be taken out of it."""
    return (
        engine.dialect.name == "sqlite"
        and sqlite_path(engine.url) is not None
        and isinstance(engine.pool, QueuePool | NullPool)
    )


class _Pinned:
    """A connection of our own, made by the engine and detached from its pool."""

    __slots__ = ("__weakref__", "driver", "fairy", "forks")

    def __init__(self, fairy: PoolProxiedConnection) -> None:
        self.driver: Any = fairy.driver_connection  # sqlite3's, or aiosqlite's
        fairy.detach()  # the pool forgets it: never reset, never handed to anyone else
        self.fairy: PoolProxiedConnection | None = fairy
        self.forks = _forks

    def close(self) -> None:
        """Close the connection (aiosqlite's: in a greenlet, as the pool would)."""
        fairy, self.fairy = self.fairy, None
        if fairy is not None and self.forks == _forks:  # never the parent's connection
            connection = fairy.dbapi_connection
            if connection is not None:
                with suppress(Exception):
                    connection.close()


class _Allocations:
    """What the sync and async forms share: the statements, the driver's errors, the pins."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.driver = engine.dialect.driver
        self.allocating = _allocating(engine.dialect)
        self.remembers = engine.dialect.name == "postgresql"
        self.remembering = None
        if self.remembers:
            remembering = named_statement("postgresql", "allocate_remembering")
            self.remembering = Statement(engine.dialect, remembering, _REMEMBERING)
        self.errors = _driver_errors(engine)
        self.pinned: weakref.WeakSet[_Pinned] = weakref.WeakSet()
        # Disposing of the engine closes its connections: ours too.
        event.listen(engine, "engine_disposed", _close_all(self.pinned))

    def _pin(self, fairy: PoolProxiedConnection) -> _Pinned:
        pinned = _Pinned(fairy)
        self.pinned.add(pinned)
        return pinned

    def _drop(self, pinned: _Pinned | None) -> None:
        if pinned is not None:
            self.pinned.discard(pinned)
            pinned.close()


def _close_all(pinned: weakref.WeakSet[_Pinned]) -> Callable[[Engine], None]:
    def close(_engine: Engine) -> None:
        for one in list(pinned):
            one.close()
        pinned.clear()

    return close


def _driver_errors(engine: Engine) -> tuple[type[BaseException], ...]:
    """Return the errors a statement's failure may raise, straight from the driver."""
    driver = engine.dialect.driver
    if driver == "asyncpg":
        # asyncpg's own errors, from the module SQLAlchemy's adapter was loaded with.
        dbapi = engine.dialect.loaded_dbapi
        asyncpg = dbapi.asyncpg
        own: tuple[type[BaseException], ...] = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError,
            dbapi.Error,  # SQLAlchemy's adapter: a failed connect
        )
    elif driver == "aiosqlite":
        own = (sqlite3.Error,)
    else:
        own = (engine.dialect.loaded_dbapi.Error,)
    return (*own, SQLAlchemyError, OSError, TimeoutError)


class SyncAllocations(_Allocations):
    """Allocations on a psycopg or sqlite3 engine's driver connection."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.psycopg = self.driver == "psycopg"
        self.local = threading.local() if _pinnable(engine) else None

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        params = self.allocating.bind(count, scope, prefix, MAX_ORDINAL - count)
        row = self._fetch(self.allocating.sql, params, False)
        return None if row is None else _manager(scope, prefix, row)

    def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        assert self.remembering is not None
        params = self.remembering.bind(
            count, scope, prefix, MAX_ORDINAL - count, *_claim(claim, status)
        )
        row = self._fetch(self.remembering.sql, params, True)
        return None if row is None else _remembered(scope, row)

    def _fetch(self, sql: str, params: Any, claiming: bool) -> Any:
        if self.local is not None:
            return self._fetch_pinned(sql, params)
        fairy = self._checkout()
        try:
            connection: Any = fairy.driver_connection
            if self.psycopg:
                row = _psycopg(connection, sql, params)
            else:
                row = _sqlite(connection, sql, params, keep=False)
        except BaseException as exc:
            if _broken(exc, self.errors):
                _throw_away(self.engine, fairy, exc)
            else:
                fairy.close()
            if isinstance(exc, self.errors):
                raise _translated(exc, claiming=claiming) from exc
            raise
        fairy.close()
        return row

    def _checkout(self) -> PoolProxiedConnection:
        try:
            return self.engine.raw_connection()
        except self.errors as exc:  # the pool raises the driver's own error, unwrapped
            raise as_domain_error(exc) from exc

    def _fetch_pinned(self, sql: str, params: Any) -> Any:
        assert self.local is not None
        pinned: _Pinned | None = getattr(self.local, "pinned", None)
        if pinned is None or pinned.fairy is None or pinned.forks != _forks:
            pinned = self.local.pinned = self._pin(self._checkout())
        assert pinned.fairy is not None
        try:
            return _sqlite(pinned.driver, sql, params, keep=True)
        except BaseException as exc:
            if _broken(exc, self.errors):
                self.local.pinned = None
                self._drop(pinned)
            if isinstance(exc, self.errors):
                raise _translated(exc) from exc
            raise


def _claim(claim: Claim, status: int) -> tuple[str, str, str, int]:
    return claim.owner, claim.key, claim.fingerprint, status


def _psycopg(connection: Any, sql: str, params: Any) -> Any:
    # Autocommit for this one statement (one round trip: no BEGIN, no COMMIT), then back to
    # what the pool handed out, so the engine's other users see no change.
    if connection.autocommit:
        return connection.execute(sql, params).fetchone()
    connection.autocommit = True
    try:
        row = connection.execute(sql, params).fetchone()
    except BaseException:
        with suppress(Exception):  # a broken connection refuses; it is thrown away then
            connection.autocommit = False
        raise
    connection.autocommit = False
    return row


def _sqlite(connection: Any, sql: str, params: Any, *, keep: bool) -> Any:
    # isolation_level None: no implicit BEGIN, the statement commits itself. idmanager's
    # engines open connections so; another engine's pooled connection gets its own back.
    level = connection.isolation_level
    if level is not None:
        connection.isolation_level = None
    try:
        # Stepped to its end by fetchall: only then is it committed.
        rows = connection.execute(sql, params).fetchall()
    finally:
        if level is not None and not keep:
            connection.isolation_level = level
    return rows[0] if rows else None


class AsyncAllocations(_Allocations):
    """Allocations on an asyncpg engine's driver connection, or aiosqlite's of our own."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.own: _Pinned | None = None  # aiosqlite: the connection of our own
        # Checkouts to make through the greenlet bridge (:meth:`_idle`), until when at least,
        # and the pool's last invalidation seen.
        self._bridged, self._bridged_until = 0, 0.0
        self._invalidated: float | None = getattr(engine.pool, "_invalidate_time", None)
        # Whatever invalidates a connection (a failure here or in a session, a connect that
        # failed at checkout) leaves its pool entry to be connected again: through the bridge.
        event.listen(engine, "invalidate", _bridging(weakref.ref(self)))

    async def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        params = self.allocating.bind(count, scope, prefix, MAX_ORDINAL - count)
        row = await self._fetch(self.allocating.sql, params, False)
        return None if row is None else _manager(scope, prefix, row)

    async def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        assert self.remembering is not None
        params = self.remembering.bind(
            count, scope, prefix, MAX_ORDINAL - count, *_claim(claim, status)
        )
        row = await self._fetch(self.remembering.sql, params, True)
        return None if row is None else _remembered(scope, row)

    async def _fetch(self, sql: str, params: Any, claiming: bool) -> Any:
        if self.driver == "aiosqlite":
            return await self._fetch_own(sql, params)
        fairy = await self._checkout()
        try:
            # Outside a transaction asyncpg runs the statement in one of its own, committed
            # before it answers.
            connection: Any = fairy.driver_connection
            row = await connection.fetchrow(sql, *params)
        except BaseException as exc:
            if _broken(exc, self.errors):
                await greenlet_spawn(_throw_away, self.engine, fairy, exc)
            else:
                await self._check_in(fairy)
            if isinstance(exc, self.errors):
                raise _translated(exc, claiming=claiming) from exc
            raise
        await self._check_in(fairy)
        return row

    async def _checkout(self) -> PoolProxiedConnection:
        idle = self._idle()
        if idle is not None:
            return idle
        try:
            fairy: PoolProxiedConnection = await greenlet_spawn(self.engine.raw_connection)
        except self.errors as exc:  # the pool raises the driver's own error, unwrapped
            raise as_domain_error(exc) from exc
        return fairy

    def _idle(self) -> PoolProxiedConnection | None:
        """Check an idle connection out without the greenlet bridge, where that takes no I/O.

        The bridge costs as much as the rest of the checkout. An idle connection of a queue
        pool that pings nothing, recycles nothing and runs no checkout hook is handed out by
        plain code. One that needs connecting again (thrown away, or the whole pool
        invalidated) would need I/O: after that, for a second and as many checkouts as the
        pool holds, the bridge takes them all. Should one need I/O all the same, SQLAlchemy
        refuses at its first await (MissingGreenlet), before any I/O, and puts it back to be
        reconnected.
        """
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return None
        invalidated = getattr(pool, "_invalidate_time", None)
        if invalidated != self._invalidated:
            self._invalidated = invalidated
            self.bridge()
        if self._bridged > 0 or (self._bridged_until and time.monotonic() < self._bridged_until):
            self._bridged -= 1
            return None
        if not (
            pool.checkedin()
            and getattr(pool, "_pre_ping", True) is False
            and getattr(pool, "_recycle", 0) == -1
            and not pool.dispatch.checkout
            # Every idle entry connected: one left to connect again (its connect failed in a
            # failover, say) would need I/O.
            and _all_connected(_idle_entries(pool))
        ):
            return None
        try:
            return self.engine.raw_connection()
        except MissingGreenlet:
            self.bridge()
            return None

    def bridge(self) -> None:
        """Check connections out through the greenlet bridge for a while (see :meth:`_idle`)."""
        self._bridged = _size(self.engine.pool)
        self._bridged_until = time.monotonic() + 1.0

    async def _check_in(self, fairy: PoolProxiedConnection) -> None:
        pool = self.engine.pool
        # Back into a queue with room, a connection outside a transaction costs no I/O (its
        # reset is a no-op), so no greenlet is needed; anything else may close it: in one.
        if isinstance(pool, QueuePool) and pool.checkedin() < pool.size():
            fairy.close()
        else:
            await greenlet_spawn(fairy.close)

    async def _fetch_own(self, sql: str, params: Any) -> Any:
        own = self.own
        if own is None or own.fairy is None or own.forks != _forks:
            own = await self._own()
        assert own.fairy is not None
        try:
            rows = await own.driver.execute_fetchall(sql, params)
        except BaseException as exc:
            if _broken(exc, self.errors):
                if self.own is own:
                    self.own = None
                self.pinned.discard(own)
                await greenlet_spawn(own.close)
            if isinstance(exc, self.errors):
                raise _translated(exc) from exc
            raise
        return rows[0] if rows else None

    async def _own(self) -> _Pinned:
        fairy = await self._checkout()
        own: _Pinned = await greenlet_spawn(_pinned_autocommit, fairy)
        if self.own is not None and self.own.fairy is not None and self.own.forks == _forks:
            await greenlet_spawn(own.close)  # another task pinned one meanwhile
            return self.own
        self.pinned.add(own)
        self.own = own
        return own


def _bridging(allocations: weakref.ref[AsyncAllocations]) -> Callable[..., None]:
    def invalidated(*_args: Any) -> None:
        found = allocations()
        if found is not None:
            found.bridge()

    return invalidated


def _idle_entries(pool: QueuePool) -> Iterable[ConnectionPoolEntry] | None:
    """Return the idle entries of a queue pool, or None where they cannot be seen.

    A thread queue keeps them in its ``queue``; the asyncio pool's queue in the ``_queue``
    of its asyncio.Queue, made at first use.
    """
    queue: Any = pool._pool
    entries = getattr(queue, "queue", None)
    if entries is None:
        made = vars(queue).get("_queue")  # memoized: not made before the first check-in
        entries = getattr(made, "_queue", None)
    found: Iterable[ConnectionPoolEntry] | None = entries
    return found


def _all_connected(entries: Iterable[ConnectionPoolEntry] | None) -> bool:
    """Return True when every idle entry of a queue pool holds a connection."""
    return entries is not None and all(entry.dbapi_connection is not None for entry in entries)


def _size(pool: Pool) -> int:
    return pool.size() if isinstance(pool, QueuePool) else 0


def _pinned_autocommit(fairy: PoolProxiedConnection) -> _Pinned:
    """Detach ``fairy`` and let each statement on it commit itself (in the greenlet)."""
    pinned = _Pinned(fairy)
    connection: Any = fairy.dbapi_connection
    if connection.isolation_level is not None:
        connection.isolation_level = None
    return pinned
