"""Use cases: entry points that own a short transaction (HTTP, CLI, callers with an engine).

Each call opens a session, runs one service operation and commits before returning, so the
IDs it returns are already permanent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ..infrastructure.repository import IdManagerRepositoryImpl, translate_errors
from .service import SyncIdManagerService

T = TypeVar("T")
Operation = Callable[[SyncIdManagerService], T]


class IdManagerUseCases:
    """Run service operations each in its own committed transaction, on an async engine."""

    def __init__(
        self, bind: AsyncEngine | async_sessionmaker[AsyncSession], **service_options: Any
    ) -> None:
        self.sessions = (
            bind
            if isinstance(bind, async_sessionmaker)
            else async_sessionmaker(bind, expire_on_commit=False)
        )
        self.service_options = service_options

    async def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        with translate_errors():
            async with self.sessions() as session:
                result = await session.run_sync(self._call, operation)
                if commit:
                    await session.commit()
                else:
                    await session.rollback()
                return result

    def _call(self, session: Session, operation: Operation[T]) -> T:
        return operation(
            SyncIdManagerService(IdManagerRepositoryImpl(session), **self.service_options)
        )


class SyncIdManagerUseCases:
    """Run service operations each in its own committed transaction, on a sync engine."""

    def __init__(self, bind: Engine | sessionmaker[Session], **service_options: Any) -> None:
        self.sessions = (
            bind if isinstance(bind, sessionmaker) else sessionmaker(bind, expire_on_commit=False)
        )
        self.service_options = service_options

    def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        with translate_errors(), self.sessions() as session:
            service = SyncIdManagerService(IdManagerRepositoryImpl(session), **self.service_options)
            result = operation(service)
            if commit:
                session.commit()
            else:
                session.rollback()
            return result
