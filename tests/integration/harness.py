"""The contract suite's harness: one test body for every backend, with async and sync sessions.

A test is written once, as ``async def``, against :class:`Db`. In sync mode the harness runs the
synchronous API (``Session``, ``SyncIdManagerService``, ``SyncIdManagerUseCases``) and only
wraps its results in awaitables, so both modes exercise their own real code paths.
"""

from __future__ import annotations

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
