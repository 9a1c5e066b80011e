"""The contract suite's harness: one test body for every backend, with async and sync sessions.

A test is written once, as ``async def``, against :class:`Db`. In sync mode the harness runs the
synchronous API (``Session``, ``SyncIdManagerService``, ``SyncIdManagerUseCases``) and only
wraps its results in awaitables, so both modes exercise their own real code paths.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

import idmanager
from idmanager.infrastructure.database import sync_url


async def resolve(value: Any) -> Any:
    """Await ``value`` if the API returned an awaitable (async mode), else return it."""
    return await value if inspect.isawaitable(value) else value


class _Awaiting:
    """Present a sync object's methods as coroutines, so one test body serves both modes."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call


class Handle:
    """A caller's session and the service over it."""

    def __init__(self, session: AsyncSession | Session, **service_options: Any) -> None:
        self.session = session
        repository = idmanager.IdManagerRepositoryImpl(session)
        options = idmanager.ServiceOptions(**service_options)
        if isinstance(session, AsyncSession):
            self.service: Any = idmanager.IdManagerService(repository, options)
        else:
            self.service = _Awaiting(idmanager.SyncIdManagerService(repository, options))

    async def commit(self) -> None:
        await resolve(self.session.commit())

    async def rollback(self) -> None:
        await resolve(self.session.rollback())

    async def begin(self) -> None:
        """Start the transaction now (so statement counts leave out BEGIN)."""
        await resolve(self.session.connection())

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Run raw SQL inside this session's transaction."""
        result = await resolve(self.session.execute(sa.text(sql), params))
        return [tuple(row) for row in result]


class Db:
    """One backend in one mode: sessions, engines, statement counts and a side-channel reader."""

    def __init__(self, backend: str, mode: str, url: str) -> None:
        self.backend, self.mode, self.url = backend, mode, url
        self.is_async = mode == "async"
        if self.is_async:
            self.engine: AsyncEngine | sa.Engine = idmanager.create_async_engine(url)
            self.sessions: Any = async_sessionmaker(self.engine, expire_on_commit=False)
        else:
            self.engine = idmanager.create_engine(url)
            self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # A plain engine, outside idmanager's configuration: on SQLite it reads without taking
        # the write lock (WAL), so it can look while a test's write transaction is open.
        self.reader = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)

    @property
    def sync_engine(self) -> sa.Engine:
        return self.engine.sync_engine if isinstance(self.engine, AsyncEngine) else self.engine

    @asynccontextmanager
    async def session(self, **service_options: Any) -> AsyncIterator[Handle]:
        """Open a caller's session; whatever it has not committed is rolled back at the end."""
        session = self.sessions()
        try:
            yield Handle(session, **service_options)
        finally:
            await resolve(session.close())

    def use_cases(self, **service_options: Any) -> Any:
        """Return the use cases of this mode, with coroutine methods either way."""
        use_cases = idmanager.connect(self.engine, idmanager.ServiceOptions(**service_options))
        return use_cases if self.is_async else _Awaiting(use_cases)

    @contextmanager
    def statements(self) -> Iterator[list[str]]:
        """Collect the SQL statements the engine sends while the block runs."""
        seen: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            seen.append(statement)

        sa.event.listen(self.sync_engine, "before_cursor_execute", record)
        try:
            yield seen
        finally:
            sa.event.remove(self.sync_engine, "before_cursor_execute", record)

    @asynccontextmanager
    async def traced(self, **service_options: Any) -> AsyncIterator[Traced]:
        """An engine of this mode whose database reports each statement it receives."""
        traced = Traced(self.backend, self.is_async, self.url, **service_options)
        try:
            yield traced
        finally:
            await resolve(traced.engine.dispose())

    def peek(self, prefix: str, scope: str = "") -> int | None:
        """Return the committed ``last_value`` of a sequence, as another connection sees it."""
        with self.reader.connect() as connection:
            return connection.execute(
                sa.text("SELECT last_value FROM id_managers WHERE scope = :s AND prefix = :p"),
                {"s": scope, "p": prefix},
            ).scalar()

    def audit(self, prefix: str, scope: str = "") -> list[tuple[Any, ...]]:
        """Return the committed audit rows of a sequence, oldest first."""
        with self.reader.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT action, old_value, new_value, actor, detail FROM id_manager_audit "
                    "WHERE scope = :s AND prefix = :p ORDER BY id"
                ),
                {"s": scope, "p": prefix},
            )
            return [tuple(row) for row in rows]

    async def dispose(self) -> None:
        await resolve(self.engine.dispose())
        self.reader.dispose()


# PostgreSQL's own log of each statement it receives, sent to the client as well.
_PG_LOG = {
    "log_statement": "all",
    "client_min_messages": "log",
    "log_min_duration_statement": "-1",
    "log_duration": "off",
}


def _logged_sql(message: str) -> str | None:
    """Return the SQL of a log_statement line ("statement: …", "execute <name>: …")."""
    if message.startswith("statement: ") or message.startswith("execute "):
        return message.split(": ", 1)[1].strip().rstrip(";")
    return None


class Traced:
    """An engine whose statements are counted where the database receives them.

    IdManager's own-transaction allocation runs on the driver connection, below SQLAlchemy's
    cursor events, so the count is the database's own: PostgreSQL logs every statement it
    receives (``log_statement``) and sends the lines to the client too
    (``client_min_messages = log``); SQLite calls a trace callback as each statement runs,
    BEGIN and COMMIT included. MariaDB's allocation goes through SQLAlchemy, whose
    ``before_cursor_execute`` sees every statement it sends.
    """

    def __init__(
        self,
        backend: str,
        is_async: bool,
        url: str,
        *,
        connect_args: dict[str, Any] | None = None,
        engine_options: dict[str, Any] | None = None,
        **service_options: Any,
    ) -> None:
        self.backend, self.is_async = backend, is_async
        self.options = idmanager.ServiceOptions(**service_options)
        self.seen: list[str] = []
        self.logged: list[str] = []  # PostgreSQL's log lines as sent, while recording
        self.recording = False
        connect_args = dict(connect_args or {})
        if backend == "postgresql":
            if is_async:
                connect_args["server_settings"] = {
                    **connect_args.get("server_settings", {}),
                    **_PG_LOG,
                }
            else:
                logged = " ".join(f"-c {k}={v}" for k, v in _PG_LOG.items())
                connect_args["options"] = f"{connect_args.get('options', '')} {logged}".strip()
        make = idmanager.create_async_engine if is_async else idmanager.create_engine
        self.engine: Any = make(url, connect_args=connect_args, **(engine_options or {}))
        sync_engine = self.engine.sync_engine if is_async else self.engine
        if backend == "mariadb":
            sa.event.listen(sync_engine, "before_cursor_execute", self._cursor)
        else:
            sa.event.listen(sync_engine, "connect", self._connect)

    def use_cases(self) -> Any:
        """Return the use cases on the traced engine, with coroutine methods either way."""
        use_cases = idmanager.connect(self.engine, self.options)
        return use_cases if self.is_async else _Awaiting(use_cases)

    @asynccontextmanager
    async def received(self) -> AsyncIterator[list[str]]:
        """Collect the statements the database receives while the block runs."""
        self.seen, self.logged = [], []
        self.recording = True
        try:
            yield self.seen
            await asyncio.sleep(0)  # asyncpg hands log lines to their listener with call_soon
            await asyncio.sleep(0)
        finally:
            self.recording = False

    def _record(self, sql: str | None) -> None:
        if self.recording and sql is not None:
            self.seen.append(sql)

    def _cursor(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self._record(statement)

    def _connect(self, dbapi_connection: Any, _record: Any) -> None:
        if self.backend == "sqlite":
            # aiosqlite's sqlite3 connection, or sqlite3's own.
            raw = dbapi_connection.driver_connection._conn if self.is_async else dbapi_connection
            raw.set_trace_callback(self._record)
        elif self.is_async:
            dbapi_connection.driver_connection.add_log_listener(
                lambda _c, message: self._logged(message.message)
            )
        else:
            dbapi_connection.add_notice_handler(lambda d: self._logged(d.message_primary or ""))

    def _logged(self, line: str) -> None:
        if self.recording:
            self.logged.append(line)
            self._record(_logged_sql(line))


_TABLES: dict[tuple[int, str], str] = {}


def database_with(databases: Any, backend: str, metadata: sa.MetaData) -> str:
    """Return a migrated database of ``backend`` that also holds ``metadata``'s tables, made
    once per run: a test module's models, kept out of the session's shared databases."""
    key = (id(metadata), backend)
    if key not in _TABLES:
        url = databases.create(backend)
        engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
        metadata.create_all(engine)
        engine.dispose()
        _TABLES[key] = url
    return _TABLES[key]


@asynccontextmanager
async def numbering(
    backend: str, mode: str, databases: Any, metadata: sa.MetaData
) -> AsyncIterator[Db]:
    """A harness on :func:`database_with`'s database for ``metadata``, its sessions numbering
    the models (``idmanager.orm.install``)."""
    from idmanager.orm import install

    db = Db(backend, mode, database_with(databases, backend, metadata))
    install(db.sessions)
    try:
        yield db
    finally:
        await db.dispose()
