"""Transactions of their own on an engine: what the use cases run in.

Each call opens a session, runs the work on a repository bound to it and commits, so what it
returns is permanent. A conflict with a concurrent transaction (a deadlock, a serialization or
certification failure, at a statement or at the commit) rolled the work back entirely: it is
run again, a bounded number of times with jittered backoff, since nothing of it was committed.
(A Galera node that drops out of its cluster during a commit may leave its outcome unknown:
running the work again then costs at most a gap, never an ID twice.) Work of one statement
runs alone where the engine allows it (:func:`.database.autocommit_view`).
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

from ..domain.errors import TransactionConflictError
from ..domain.repository import AsyncTransactions, IdManagerRepository, Transactions
from .database import autocommit_view
from .errors import translate_errors
from .repository import IdManagerRepositoryImpl

T = TypeVar("T")
Work = Callable[[IdManagerRepository], T]

CONFLICT_RETRIES = 5
_BACKOFF_S = 0.005
_MAX_BACKOFF_S = 0.25


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
        self.autocommit = autocommit_view(bind) if isinstance(bind, Engine) else None
        self.retries = retries
        self.conflicts_retried = 0

    def claims_in_one_statement(self) -> bool:
        return self.autocommit is not None and self.autocommit.dialect.name == "postgresql"

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
        autocommit = autocommit_view(bind.sync_engine) if isinstance(bind, AsyncEngine) else None
        self.autocommit = AsyncEngine(autocommit) if autocommit is not None else None
        self.retries = retries
        self.conflicts_retried = 0

    def claims_in_one_statement(self) -> bool:
        return self.autocommit is not None and self.autocommit.dialect.name == "postgresql"

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
