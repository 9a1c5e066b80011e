"""Use cases: entry points that own a short transaction (HTTP, CLI, callers with an engine).

Each call runs one service operation in a transaction of its own, committed before it
returns, so the IDs it returns are already permanent. Storage is reached only through a
:class:`Transactions` (or :class:`AsyncTransactions`): the SQLAlchemy one in production, an
in-memory fake in fast tests.

The steps of an operation are written once, as a generator that yields each unit of work and
receives its result; the sync and the async use cases only drive it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from datetime import date
from typing import Any, TypeVar, cast

from ..domain.entity import check_count
from ..domain.format import IdRange
from ..domain.repository import (
    AsyncTransactions,
    IdManagerRepository,
    Transactions,
)
from .options import DEFAULT_OPTIONS, ServiceOptions
from .service import SyncIdManagerService, sequence_key

T = TypeVar("T")
Operation = Callable[[SyncIdManagerService], T]
Work = Callable[[IdManagerRepository], Any]
# A unit of work and whether it is one statement (which may then run without BEGIN/COMMIT).
Step = tuple[Work, bool]
Steps = Generator[Step, Any, T]


class _Steps:
    """What the sync and the async use cases share: the options, and each operation's steps."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options

    def _service(self, repository: IdManagerRepository) -> SyncIdManagerService:
        return SyncIdManagerService(repository, self.options)

    def _work(self, operation: Operation[T]) -> Callable[[IdManagerRepository], T]:
        return lambda repository: operation(self._service(repository))

    def _allocation(
        self, prefix: str, count: int, scope: str, on: date | None, **changes: Any
    ) -> Steps[IdRange]:
        """Allocate in one statement when the sequence exists; else in a transaction.

        ``changes`` vary the options of the second step, the one that may create the
        sequence (who creates it, whether they may).
        """
        key = sequence_key(prefix, scope, on, self.options)
        check_count(count, self.options.max_count)
        if self.options.lock_timeout_ms is None:
            # The session-level lock wait applies: the allocation can run alone.
            ids: IdRange | None = yield self._work(lambda s: s.allocate_existing(key, count)), True
            if ids is not None:
                return ids
        options = dataclasses.replace(self.options, **changes) if changes else self.options

        def full(repository: IdManagerRepository) -> IdRange:
            service = SyncIdManagerService(repository, options)
            return service.generate_range(prefix, count, scope=scope, on=on)

        created: IdRange = yield full, False
        return created


def _changes(actor: str | None, create: bool | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if actor is not None:
        changes["actor"] = actor
    if create is not None:
        changes["create_missing"] = create
    return changes


class SyncIdManagerUseCases(_Steps):
    """Run service operations each in its own committed transaction (threads, scripts)."""

    def __init__(self, transactions: Transactions, options: ServiceOptions = DEFAULT_OPTIONS):
        super().__init__(options)
        self.transactions = transactions

    def with_options(self, **changes: Any) -> SyncIdManagerUseCases:
        """Return use cases on the same storage with other options (say, the actor)."""
        return SyncIdManagerUseCases(
            self.transactions, dataclasses.replace(self.options, **changes)
        )

    def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        return self.transactions.run(self._work(operation), commit=commit)

    def allocate(
        self,
        prefix: str,
        count: int = 1,
        *,
        scope: str = "",
        on: date | None = None,
        actor: str | None = None,
        create: bool | None = None,
    ) -> IdRange:
        """Allocate ``count`` IDs, committed before they are returned (one round trip when
        the sequence exists). ``actor`` and ``create`` apply to a sequence created now."""
        return self._drive(self._allocation(prefix, count, scope, on, **_changes(actor, create)))

    def _drive(self, steps: Steps[T]) -> T:
        result: Any = None
        try:
            while True:
                work, single = steps.send(result)
                run = self.transactions.run_single if single else self.transactions.run
                result = run(work)
        except StopIteration as done:
            return cast(T, done.value)


class IdManagerUseCases(_Steps):
    """Run service operations each in its own committed transaction (asyncio)."""

    def __init__(self, transactions: AsyncTransactions, options: ServiceOptions = DEFAULT_OPTIONS):
        super().__init__(options)
        self.transactions = transactions

    def with_options(self, **changes: Any) -> IdManagerUseCases:
        """Return use cases on the same storage with other options (say, the actor)."""
        return IdManagerUseCases(self.transactions, dataclasses.replace(self.options, **changes))

    async def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        return await self.transactions.run(self._work(operation), commit=commit)

    async def allocate(
        self,
        prefix: str,
        count: int = 1,
        *,
        scope: str = "",
        on: date | None = None,
        actor: str | None = None,
        create: bool | None = None,
    ) -> IdRange:
        """Allocate ``count`` IDs, committed before they are returned (one round trip when
        the sequence exists). ``actor`` and ``create`` apply to a sequence created now."""
        steps = self._allocation(prefix, count, scope, on, **_changes(actor, create))
        return await self._drive(steps)

    async def _drive(self, steps: Steps[T]) -> T:
        result: Any = None
        try:
            while True:
                work, single = steps.send(result)
                run = self.transactions.run_single if single else self.transactions.run
                result = await run(work)
        except StopIteration as done:
            return cast(T, done.value)
