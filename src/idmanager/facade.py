"""The seed's convenience API: ``IdGeneratorUtil`` and the common ``IdPrefixes``.

Every method takes what the caller has: a session (the IDs join its transaction and become
permanent when the caller commits) or an engine / session factory (the IDs are committed in a
short transaction of their own before they are returned). Async sessions and engines give an
awaitable; sync ones give the value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from functools import partial
from typing import Any, TypeAlias, TypeVar, overload

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from .application.service import SyncIdManagerService
from .application.use_cases import IdManagerUseCases, Operation, SyncIdManagerUseCases
from .compose import connect
from .domain.format import IdRange
from .infrastructure.repository import IdManagerRepositoryImpl

T = TypeVar("T")
AsyncDb: TypeAlias = AsyncSession | AsyncEngine | async_sessionmaker[AsyncSession]
SyncDb: TypeAlias = Session | Engine | sessionmaker[Session]


class IdPrefixes:
    """Common prefixes (the seed's constants)."""

    CUSTOMER = "CUS"
    VENDOR = "VEN"
    WAREHOUSE = "WH"
    ITEM_PACKAGING = "PKG"
    UNIT_OF_MEASUREMENT = "UOM"
    PURCHASE_ORDER = "PUR"
    SALES_ORDER = "SAL"
    INVOICE = "INV"
    RECEIPT = "REC"
    INVENTORY = "INVY"
    HEALTH_CHECK = "_HEALTH_CHECK_"
    TEST = "TEST"


# The use cases of each engine (or session factory) the caller hands in, built once: a call
# then costs the allocation, not the setting up of sessions. Kept on the object itself (an
# async engine's on its sync engine): they refer to it, so a cache beside it would keep every
# engine, and its pool, alive for ever; as an attribute they go with it.
_USE_CASES = "_idmanager_use_cases"
_ASYNC_USE_CASES = "_idmanager_async_use_cases"


def _connected(db: Any) -> IdManagerUseCases | SyncIdManagerUseCases:
    holder, name = (
        (db.sync_engine, _ASYNC_USE_CASES) if isinstance(db, AsyncEngine) else (db, _USE_CASES)
    )
    found: IdManagerUseCases | SyncIdManagerUseCases | None = getattr(holder, name, None)
    if found is None:
        found = connect(db)
        setattr(holder, name, found)
    return found


def _unknown(db: object) -> TypeError:
    return TypeError(
        f"Expected a SQLAlchemy session, engine or session factory, got {type(db).__name__}"
    )


def _run(db: AsyncDb | SyncDb, operation: Operation[T]) -> T | Awaitable[T]:
    if isinstance(db, AsyncSession):
        repository = IdManagerRepositoryImpl(db)
        return repository.run(partial(operation, SyncIdManagerService(repository)))
    if isinstance(db, Session):
        return operation(SyncIdManagerService(IdManagerRepositoryImpl(db)))
    if isinstance(db, AsyncEngine | async_sessionmaker | Engine | sessionmaker):
        return _connected(db).run(operation)
    raise _unknown(db)


def _allocate(
    db: AsyncDb | SyncDb, prefix: str, count: int, scope: str, on: date | None
) -> IdRange | Awaitable[IdRange]:
    """Allocate in the caller's transaction, or in one round trip of its own for an engine."""
    # A sync engine or session factory seen before holds its use cases: found in one look.
    connected = getattr(db, _USE_CASES, None)
    if connected is None:
        if not isinstance(db, AsyncEngine | async_sessionmaker | Engine | sessionmaker):
            return _run(db, lambda s: s.generate_range(prefix, count, scope=scope, on=on))
        connected = _connected(db)
    return connected.allocate(prefix, count, scope=scope, on=on)


def _then(result: IdRange | Awaitable[IdRange], pick: Callable[[IdRange], T]) -> T | Awaitable[T]:
    if isinstance(result, IdRange):
        return pick(result)

    async def picked() -> T:
        return pick(await result)

    return picked()


class IdGeneratorUtil:
    """One-call ID generation: ``await IdGeneratorUtil.generate_id("CUS", session)``."""

    @overload
    @staticmethod
    def generate_id(
        prefix: str, db_session: AsyncDb, *, scope: str = "", on: date | None = None
    ) -> Awaitable[str]: ...
    @overload
    @staticmethod
    def generate_id(
        prefix: str, db_session: SyncDb, *, scope: str = "", on: date | None = None
    ) -> str: ...
    @staticmethod
    def generate_id(
        prefix: str, db_session: Any, *, scope: str = "", on: date | None = None
    ) -> Any:
        """Allocate the next ID of ``prefix`` (a period template is resolved from ``on``).

        Raises:
            InvalidPrefixError: the prefix is empty, too long or has invalid characters.
            PrefixInactiveError: the prefix is deactivated.
            StorageError: the database is unavailable.
        """
        return _then(_allocate(db_session, prefix, 1, scope, on), lambda ids: ids[0])

    @overload
    @staticmethod
    def bulk_generate_ids(
        prefix: str, count: int, db_session: AsyncDb, *, scope: str = "", on: date | None = None
    ) -> Awaitable[list[str]]: ...
    @overload
    @staticmethod
    def bulk_generate_ids(
        prefix: str, count: int, db_session: SyncDb, *, scope: str = "", on: date | None = None
    ) -> list[str]: ...
    @staticmethod
    def bulk_generate_ids(
        prefix: str, count: int, db_session: Any, *, scope: str = "", on: date | None = None
    ) -> Any:
        """Allocate ``count`` consecutive IDs of ``prefix`` in one statement.

        Raises:
            InvalidCountError: ``count`` is below 1 or above the maximum.
        """
        return _then(_allocate(db_session, prefix, count, scope, on), lambda ids: ids[:])

    @overload
    @staticmethod
    def get_current_id(
        prefix: str, db_session: AsyncDb, *, scope: str = "", on: date | None = None
    ) -> Awaitable[str | None]: ...
    @overload
    @staticmethod
    def get_current_id(
        prefix: str, db_session: SyncDb, *, scope: str = "", on: date | None = None
    ) -> str | None: ...
    @staticmethod
    def get_current_id(
        prefix: str, db_session: Any, *, scope: str = "", on: date | None = None
    ) -> Any:
        """Return the latest ID issued for ``prefix``, or None if it has issued none."""
        return _run(db_session, lambda s: s.get_current_id(prefix, scope=scope, on=on))
