"""Use cases over a SQLAlchemy engine: where the application meets its storage.

``connect(async_engine)`` gives :class:`IdManagerUseCases` (each call in a short
transaction of its own, committed before it returns); ``connect(engine)`` the sync twin.
"""

from __future__ import annotations

from typing import overload

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from .application.options import DEFAULT_OPTIONS, ServiceOptions
from .application.use_cases import IdManagerUseCases, SyncIdManagerUseCases
from .infrastructure.transactions import AsyncSqlTransactions, SqlTransactions


@overload
def connect(
    bind: AsyncEngine | async_sessionmaker[AsyncSession], options: ServiceOptions = ...
) -> IdManagerUseCases: ...
@overload
def connect(
    bind: Engine | sessionmaker[Session], options: ServiceOptions = ...
) -> SyncIdManagerUseCases: ...
def connect(
    bind: AsyncEngine | async_sessionmaker[AsyncSession] | Engine | sessionmaker[Session],
    options: ServiceOptions = DEFAULT_OPTIONS,
) -> IdManagerUseCases | SyncIdManagerUseCases:
    """Return the use cases over ``bind``: async for an async engine, sync otherwise."""
    if isinstance(bind, AsyncEngine | async_sessionmaker):
        return IdManagerUseCases(AsyncSqlTransactions(bind), options)
    if isinstance(bind, Engine | sessionmaker):
        return SyncIdManagerUseCases(SqlTransactions(bind), options)
    raise TypeError(f"Expected a SQLAlchemy engine or session factory, got {type(bind).__name__}")
