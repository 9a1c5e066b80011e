"""Use cases: entry points that own a short transaction (HTTP, CLI, callers with an engine).

Each call opens a session, runs one service operation and commits before returning, so the
IDs it returns are already permanent.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ..domain.format import IdRange
from ..infrastructure.repository import IdManagerRepositoryImpl, translate_errors
from .service import SyncIdManagerService

T = TypeVar("T")
Operation = Callable[[SyncIdManagerService], T]


def _autocommit(engine: Engine) -> Engine | None:
    """Return a view of ``engine`` whose statements commit themselves, where that is safe.

    An allocation is one statement on PostgreSQL and SQLite: run alone, it is atomic and
    saves the BEGIN and COMMIT round trips. MySQL's allocation needs two statements, so it
    keeps its transaction.
    """
    if engine.dialect.name in ("postgresql", "sqlite"):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return None


class IdManagerUseCases:
    """Run service operations each in its own committed transaction, on an async engine."""

    def __init__(
        self, bind: AsyncEngine | async_sessionmaker[AsyncSession], **service_options: Any
    ) -> None:
        self.engine = bind if isinstance(bind, AsyncEngine) else None
        # A session connects on its first statement, inside the operation: a health check
        # then reports an unreachable database instead of failing to start.
        self.sessions = (
            bind
            if isinstance(bind, async_sessionmaker)
            else async_sessionmaker(bind, expire_on_commit=False)
        )
        autocommit = _autocommit(self.engine.sync_engine) if self.engine is not None else None
        self.autocommit = AsyncEngine(autocommit) if autocommit is not None else None
        self.service_options = service_options

    def with_options(self, **service_options: Any) -> IdManagerUseCases:
        """Return use cases on the same engine with other service options (say, the actor)."""
        clone = copy.copy(self)
        clone.service_options = {**self.service_options, **service_options}
        return clone

    async def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        with translate_errors():
            async with self.sessions() as session:
                result = await session.run_sync(self._call, operation)
                await (session.commit() if commit else session.rollback())
                return result

    async def allocate(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        """Allocate ``count`` IDs, committed before they are returned, in one round trip.

        Where the allocation is a single statement it runs in autocommit mode, so the
        database sees that statement alone, not BEGIN, the statement and COMMIT.
        """
        operation = _allocation(prefix, count, scope, on)
        if self.autocommit is None:
            return await self.run(operation)
        with translate_errors():
            async with self.autocommit.connect() as connection:
                return await connection.run_sync(self._call, operation)

    def _call(self, bind: Session | Connection, operation: Operation[T]) -> T:
        return operation(
            SyncIdManagerService(IdManagerRepositoryImpl(bind), **self.service_options)
        )


def _allocation(prefix: str, count: int, scope: str, on: date | None) -> Operation[IdRange]:
    return lambda service: service.generate_range(prefix, count, scope=scope, on=on)


class SyncIdManagerUseCases:
    """Run service operations each in its own committed transaction, on a sync engine."""

    def __init__(self, bind: Engine | sessionmaker[Session], **service_options: Any) -> None:
        self.engine = bind if isinstance(bind, Engine) else None
        self.sessions = (
            bind if isinstance(bind, sessionmaker) else sessionmaker(bind, expire_on_commit=False)
        )
        self.autocommit = _autocommit(self.engine) if self.engine is not None else None
        self.service_options = service_options

    def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        with translate_errors(), self.sessions() as session:
            return self._finish(session, operation, commit)

    def allocate(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        """Allocate ``count`` IDs, committed before they are returned, in one round trip."""
        operation = _allocation(prefix, count, scope, on)
        if self.autocommit is None:
            return self.run(operation)
        with translate_errors(), self.autocommit.connect() as connection:
            return operation(self._service(connection))

    def _service(self, bind: Session | Connection) -> SyncIdManagerService:
        return SyncIdManagerService(IdManagerRepositoryImpl(bind), **self.service_options)

    def _finish(self, bind: Session | Connection, operation: Operation[T], commit: bool) -> T:
        result = operation(self._service(bind))
        if commit:
            bind.commit()
        else:
            bind.rollback()
        return result
