"""Transactions of their own on an engine: what the use cases run in.

Each call opens a session, runs the work on a repository bound to it and commits, so what it
returns is permanent. A conflict with a concurrent transaction (a deadlock, a serialization or
certification failure, at a statement or at the commit) rolled the work back entirely: it is
run again, a bounded number of times with jittered backoff, since nothing of it was committed.
(A Galera node that drops out of its cluster during a commit may leave its outcome unknown:
running the work again then costs at most a gap, never an ID twice.)

The hot allocation (:meth:`allocate`, and PostgreSQL's keyed :meth:`allocate_remembering`) is
one statement: on PostgreSQL and SQLite it runs on the driver connection in autocommit
(:mod:`.direct`); on MySQL alone, with the server committing it
(:func:`.database.autocommit_view`); elsewhere in a transaction.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ..domain.entity import IdManager
from ..domain.errors import TransactionConflictError
from ..domain.repository import AsyncTransactions, Claim, IdManagerRepository, Transactions
from .database import autocommit_view
from .direct import ASYNC_DRIVERS, SYNC_DRIVERS, AsyncAllocations, SyncAllocations, supported
from .errors import translate_errors
from .repository import IdManagerRepositoryImpl

T = TypeVar("T")
Work = Callable[[IdManagerRepository], T]

CONFLICT_RETRIES = 5
_BACKOFF_S = 0.005
_MAX_BACKOFF_S = 0.25


def _engine_of(bind: Engine | sessionmaker[Session]) -> Engine | None:
    """Return the engine a bind allocates on: itself, or a session factory's plain engine."""
    if isinstance(bind, Engine):
        return bind
    engine = bind.kw.get("bind")
    return engine if isinstance(engine, Engine) and not bind.kw.get("binds") else None


def _backoff(attempt: int) -> float:
    """Return how long to wait before retry ``attempt`` (0-based): exponential, jittered."""
    ceiling = min(_BACKOFF_S * 2**attempt, _MAX_BACKOFF_S)
    return random.uniform(ceiling / 2, ceiling)


class SqlTransactions(Transactions):
    """Transactions on a sync engine (or session factory)."""

    def __init__(self, bind: Engine | sessionmaker[Session], *, retries: int = CONFLICT_RETRIES):
        self.sessions = (
            bind if isinstance(bind, sessionmaker) else sessionmaker(bind, expire_on_commit=False)
        )
        engine = _engine_of(bind)
        self.direct = (
            SyncAllocations(engine)
            if engine is not None and engine.dialect.driver in SYNC_DRIVERS and supported(engine)
            else None
        )
        self.autocommit = (
            autocommit_view(engine) if engine is not None and self.direct is None else None
        )
        self.retries = retries
        self.conflicts_retried = 0

    def claims_in_one_statement(self) -> bool:
        if self.direct is not None:
            return self.direct.remembers
        return self.autocommit is not None and self.autocommit.dialect.name == "postgresql"

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        direct = self.direct
        if direct is None:
            return super().allocate(scope, prefix, count)
        return self._retrying(lambda: direct.allocate(scope, prefix, count))

    def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        direct = self.direct
        if direct is None or not direct.remembers:
            return super().allocate_remembering(scope, prefix, count, claim, status)
        return self._retrying(
            lambda: direct.allocate_remembering(scope, prefix, count, claim, status)
        )

    def run(self, work: Work[T], *, commit: bool = True) -> T:
        return self._retrying(lambda: self._once(work, commit))

    def run_single(self, work: Work[T]) -> T:
        if self.autocommit is None:
            return self.run(work)
        return self._retrying(lambda: self._single(work))

    def _retrying(self, attempt_once: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return attempt_once()
            except TransactionConflictError:
                if attempt == self.retries:
                    raise
                self.conflicts_retried += 1
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, work: Work[T], commit: bool) -> T:
        with translate_errors(), self.sessions() as session:
            result = work(IdManagerRepositoryImpl(session))
            if commit:
                session.commit()
            else:
                session.rollback()
            return result

    def _single(self, work: Work[T]) -> T:
        assert self.autocommit is not None
        with translate_errors(), self.autocommit.connect() as connection:
            return work(IdManagerRepositoryImpl(connection))


def _async_engine_of(bind: AsyncEngine | async_sessionmaker[AsyncSession]) -> Engine | None:
    """Return the sync engine behind an async bind (a session factory's plain engine)."""
    if isinstance(bind, AsyncEngine):
        return bind.sync_engine
    engine = bind.kw.get("bind")
    return (
        engine.sync_engine if isinstance(engine, AsyncEngine) and not bind.kw.get("binds") else None
    )


class AsyncSqlTransactions(AsyncTransactions):
    """Transactions on an async engine (or session factory); the work runs on its greenlet."""

    def __init__(
        self,
        bind: AsyncEngine | async_sessionmaker[AsyncSession],
        *,
        retries: int = CONFLICT_RETRIES,
    ):
        # A session connects on its first statement, inside the work: a health check then
        # reports an unreachable database instead of failing to start.
        self.sessions = (
            bind
            if isinstance(bind, async_sessionmaker)
            else async_sessionmaker(bind, expire_on_commit=False)
        )
        engine = _async_engine_of(bind)
        self.direct = (
            AsyncAllocations(engine)
            if engine is not None and engine.dialect.driver in ASYNC_DRIVERS and supported(engine)
            else None
        )
        autocommit = autocommit_view(engine) if engine is not None and self.direct is None else None
        self.autocommit = AsyncEngine(autocommit) if autocommit is not None else None
        self.retries = retries
        self.conflicts_retried = 0

    def claims_in_one_statement(self) -> bool:
        if self.direct is not None:
            return self.direct.remembers
        return self.autocommit is not None and self.autocommit.dialect.name == "postgresql"

    async def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        direct = self.direct
        if direct is None:
            return await super().allocate(scope, prefix, count)
        return await self._retrying(lambda: direct.allocate(scope, prefix, count))

    async def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        direct = self.direct
        if direct is None or not direct.remembers:
            return await super().allocate_remembering(scope, prefix, count, claim, status)
        return await self._retrying(
            lambda: direct.allocate_remembering(scope, prefix, count, claim, status)
        )

    async def run(self, work: Work[T], *, commit: bool = True) -> T:
        return await self._retrying(lambda: self._once(work, commit))

    async def run_single(self, work: Work[T]) -> T:
        if self.autocommit is None:
            return await self.run(work)
        return await self._retrying(lambda: self._single(work))

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return await attempt_once()
            except TransactionConflictError:
                if attempt == self.retries:
                    raise
                self.conflicts_retried += 1
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, work: Work[T], commit: bool) -> T:
        with translate_errors():
            async with self.sessions() as session:
                result = await session.run_sync(lambda sync: work(IdManagerRepositoryImpl(sync)))
                await (session.commit() if commit else session.rollback())
                return result

    async def _single(self, work: Work[T]) -> T:
        assert self.autocommit is not None
        with translate_errors():
            async with self.autocommit.connect() as connection:
                return await connection.run_sync(lambda sync: work(IdManagerRepositoryImpl(sync)))
