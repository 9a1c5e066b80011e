"""Use cases: entry points that own a short transaction (HTTP, CLI, callers with an engine).

Each call runs one service operation in a transaction of its own, committed before it
returns, so the IDs it returns are already permanent. Storage is reached only through a
:class:`Transactions` (or :class:`AsyncTransactions`): the SQLAlchemy one in production, an
in-memory fake in fast tests.

The steps of an operation are written once, as a generator that yields each unit of work and
receives its result, or has its failure thrown in (a :class:`KeyAlreadyUsed`, a refusal):
the steps answer it or let it go. The sync and the async use cases only drive them.

An operation may carry a :class:`Claim` (an idempotency key): its answer is stored in the
same transaction as its effect, and a repeat of the claim gets that answer back instead of
a second effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Generator
from datetime import date, datetime
from typing import Any, Generic, TypeVar, cast

from ..domain.entity import check_count
from ..domain.errors import BusyError, IdempotencyKeyReusedError, IdManagerError, StorageError
from ..domain.format import IdRange
from ..domain.repository import (
    AsyncTransactions,
    Claim,
    IdManagerRepository,
    KeyAlreadyUsed,
    Remembered,
    Transactions,
    allocation_answer,
    allocation_of,
)
from .options import DEFAULT_OPTIONS, ServiceOptions
from .service import SyncIdManagerService, sequence_key

T = TypeVar("T")
Operation = Callable[[SyncIdManagerService], T]
Work = Callable[[IdManagerRepository], Any]
# A call of the transactions: the name of the method and its arguments. "run" runs work in
# a transaction; "allocate_remembering" makes one atomic statement, which storage may run as
# fast as it can (no transaction, the driver's prepared statement). The usual allocation's
# one statement, ``allocate``, is called before any steps are made (``_one_statement``).
Step = tuple[str, tuple[Any, ...]]
Steps = Generator[Step, Any, T]


def _run(work: Work) -> Step:
    return "run", (work,)


# A claim is tried again this often when its first holder rolled back while we waited.
_CLAIM_ATTEMPTS = 3
# Expired idempotency answers are deleted this many per transaction.
FORGET_BATCH = 1000
# ... with this pause between batches: a writer waiting for SQLite's one lock polls for it up
# to every 100 ms, so without a pause at least that long it can miss batch after batch.
FORGET_PAUSE_S = 0.1


@dataclasses.dataclass(frozen=True, slots=True)
class Once(Generic[T]):
    """The result of a claimed operation, and whether it is the answer stored by an earlier
    request with the same key (nothing was done this time)."""

    value: T
    replayed: bool


class _Steps:
    """What the sync and the async use cases share: the options, and each operation's steps."""

    transactions: Transactions | AsyncTransactions

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options

    def _service(self, repository: IdManagerRepository) -> SyncIdManagerService:
        return SyncIdManagerService(repository, self.options)

    def _work(self, operation: Operation[T]) -> Callable[[IdManagerRepository], T]:
        return lambda repository: operation(self._service(repository))

    def _allocation(
        self,
        prefix: str,
        count: int,
        scope: str,
        on: date | None,
        claim: Claim | None = None,
        **changes: Any,
    ) -> Steps[Once[IdRange]]:
        """Allocate in a transaction, which may create the sequence; with a ``claim``, in one
        statement first where storage can (done when the sequence exists).

        Without a claim, the caller has tried the one statement already
        (:meth:`_one_statement`): these steps are for a sequence it did not find, or for a
        lock timeout. ``changes`` vary the options of the transaction, the step that may
        create the sequence (who creates it, whether they may). With a ``claim`` the answer
        is stored with the allocation, or the stored answer of an earlier request is
        returned.
        """
        key = sequence_key(prefix, scope, on, self.options)
        check_count(count, self.options.max_count)

        def full(repository: IdManagerRepository) -> IdRange:
            # Made here: most allocations end in one statement, which needs no options.
            options = dataclasses.replace(self.options, **changes) if changes else self.options
            ids = SyncIdManagerService(repository, options).generate_range(
                prefix, count, scope=scope, on=on
            )
            if claim is not None:
                repository.remember(claim, 201, allocation_answer(ids))
            return ids

        # The session-level lock wait applies to a statement run alone.
        single = self.options.lock_timeout_ms is None
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                if claim is not None and single and self.transactions.claims_in_one_statement():
                    manager = yield "allocate_remembering", (*key, count, claim, 201)
                    if manager is not None:
                        return Once(manager.issued(count), False)
                created: IdRange = yield _run(full)
                return Once(created, False)
            except KeyAlreadyUsed:
                stored = yield from _recall(cast(Claim, claim))
                if stored is not None:
                    return Once(allocation_of(stored.answer), True)
            except IdManagerError as exc:
                if claim is None or not _refusal(exc):
                    raise
                # A repeat may find the sequence changed since the first request (inactive
                # now, say): the first one's answer still stands.
                stored = yield from _recall(claim)
                if stored is None:
                    raise
                return Once(allocation_of(stored.answer), True)
        raise _still_held()

    def _one_statement(
        self, prefix: str, count: int, scope: str, on: date | None
    ) -> tuple[str, str, int] | None:
        """Return the arguments of the one statement an allocation without a claim tries
        first (it is done if the sequence exists); None where a lock timeout applies, which
        needs a transaction: the steps then do it all.

        Tried before the steps are made: the usual allocation is this one statement, and
        driving the steps would cost it about 4 µs of Python (a fifth of one on SQLite).
        """
        if self.options.lock_timeout_ms is not None:
            return None
        scope, prefix = sequence_key(prefix, scope, on, self.options)
        return scope, prefix, check_count(count, self.options.max_count)

    def _claimed(
        self,
        operation: Operation[T],
        claim: Claim,
        encode: Callable[[T], str],
        decode: Callable[[str], T],
    ) -> Steps[Once[T]]:
        """Run ``operation`` and store its answer with it; or return the stored answer."""

        def work(repository: IdManagerRepository) -> T:
            result = operation(self._service(repository))
            repository.remember(claim, 200, encode(result))
            return result

        for _ in range(_CLAIM_ATTEMPTS):
            try:
                result: T = yield _run(work)
                return Once(result, False)
            except KeyAlreadyUsed:
                stored = yield from _recall(claim)
                if stored is not None:
                    return Once(decode(stored.answer), True)
            except IdManagerError as exc:
                if not _refusal(exc):
                    raise
                # A repeated reset finds the sequence moved on (a backwards reset now): the
                # first one's answer still stands.
                stored = yield from _recall(claim)
                if stored is None:
                    raise
                return Once(decode(stored.answer), True)
        raise _still_held()


def _refusal(exc: IdManagerError) -> bool:
    """Return True for a refusal the state of the storage caused (not its availability)."""
    return not isinstance(exc, BusyError | StorageError)


def _recall(claim: Claim) -> Generator[Step, Any, Remembered | None]:
    """Read the answer stored for a claim's key; refuse it for another request.

    None: the request that held the key rolled back meanwhile (or its answer expired): the
    claim may be tried again.
    """
    stored: Remembered | None = yield _run(lambda r: r.recall(claim.owner, claim.key))
    if stored is not None and stored.fingerprint != claim.fingerprint:
        raise IdempotencyKeyReusedError(
            "This Idempotency-Key was used with another request; a key names one request: "
            "send a new key for a new request"
        )
    return stored


def _still_held() -> BusyError:
    # Each time the key was taken, its holder rolled back before we could read its answer.
    return BusyError("Another request with this Idempotency-Key is being processed; retry it")


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
        self.transactions: Transactions = transactions

    def with_options(self, **changes: Any) -> SyncIdManagerUseCases:
        """Return use cases on the same storage with other options (say, the actor)."""
        return SyncIdManagerUseCases(
            self.transactions, dataclasses.replace(self.options, **changes)
        )

    def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        return self.transactions.run(self._work(operation), commit=commit)

    def run_once(
        self,
        operation: Operation[T],
        claim: Claim,
        encode: Callable[[T], str],
        decode: Callable[[str], T],
    ) -> Once[T]:
        """Run ``operation`` once per claim: a repeat gets the first answer back."""
        return self._drive(self._claimed(operation, claim, encode, decode))

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
        first = self._one_statement(prefix, count, scope, on)
        if first is not None and (manager := self.transactions.allocate(*first)) is not None:
            return manager.issued(count)
        steps = self._allocation(prefix, count, scope, on, **_changes(actor, create))
        return self._drive(steps).value

    def allocate_once(
        self,
        prefix: str,
        count: int,
        claim: Claim,
        *,
        scope: str = "",
        on: date | None = None,
        actor: str | None = None,
        create: bool | None = None,
    ) -> Once[IdRange]:
        """Allocate as :meth:`allocate`, once per claim: a repeat gets the same IDs."""
        steps = self._allocation(prefix, count, scope, on, claim, **_changes(actor, create))
        return self._drive(steps)

    def forget_answers(
        self,
        before: datetime,
        *,
        owner: str | None = None,
        batch: int = FORGET_BATCH,
        pause: float = FORGET_PAUSE_S,
    ) -> int:
        """Delete the idempotency answers stored before ``before`` (only ``owner``'s when
        given), a short transaction per ``batch`` and ``pause`` seconds between them (no long
        lock, allocations go first); return how many."""
        total = 0
        while (done := self.transactions.run(lambda r: r.forget(before, batch, owner))) > 0:
            total += done
            if done < batch:
                break
            time.sleep(pause)
        return total

    def _drive(self, steps: Steps[T]) -> T:
        result: Any = None
        thrown: Exception | None = None
        try:
            while True:
                name, args = steps.throw(thrown) if thrown is not None else steps.send(result)
                thrown = None
                try:
                    result = getattr(self.transactions, name)(*args)
                except Exception as exc:  # the steps may answer it (a key already used)
                    thrown = exc
        except StopIteration as done:
            return cast(T, done.value)


class IdManagerUseCases(_Steps):
    """Run service operations each in its own committed transaction (asyncio)."""

    def __init__(self, transactions: AsyncTransactions, options: ServiceOptions = DEFAULT_OPTIONS):
        super().__init__(options)
        self.transactions: AsyncTransactions = transactions

    def with_options(self, **changes: Any) -> IdManagerUseCases:
        """Return use cases on the same storage with other options (say, the actor)."""
        return IdManagerUseCases(self.transactions, dataclasses.replace(self.options, **changes))

    async def run(self, operation: Operation[T], *, commit: bool = True) -> T:
        """Run ``operation`` on a service in a new transaction; commit it, or roll it back."""
        return await self.transactions.run(self._work(operation), commit=commit)

    async def run_once(
        self,
        operation: Operation[T],
        claim: Claim,
        encode: Callable[[T], str],
        decode: Callable[[str], T],
    ) -> Once[T]:
        """Run ``operation`` once per claim: a repeat gets the first answer back."""
        return await self._drive(self._claimed(operation, claim, encode, decode))

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
        first = self._one_statement(prefix, count, scope, on)
        if first is not None and (manager := await self.transactions.allocate(*first)) is not None:
            return manager.issued(count)
        steps = self._allocation(prefix, count, scope, on, **_changes(actor, create))
        return (await self._drive(steps)).value

    async def allocate_once(
        self,
        prefix: str,
        count: int,
        claim: Claim,
        *,
        scope: str = "",
        on: date | None = None,
        actor: str | None = None,
        create: bool | None = None,
    ) -> Once[IdRange]:
        """Allocate as :meth:`allocate`, once per claim: a repeat gets the same IDs."""
        steps = self._allocation(prefix, count, scope, on, claim, **_changes(actor, create))
        return await self._drive(steps)

    async def forget_answers(
        self,
        before: datetime,
        *,
        owner: str | None = None,
        batch: int = FORGET_BATCH,
        pause: float = FORGET_PAUSE_S,
    ) -> int:
        """Delete the idempotency answers stored before ``before`` (only ``owner``'s when
        given), a short transaction per ``batch`` and ``pause`` seconds between them (no long
        lock, allocations go first); return how many."""
        total = 0
        while (done := await self.transactions.run(lambda r: r.forget(before, batch, owner))) > 0:
            total += done
            if done < batch:
                break
            await asyncio.sleep(pause)
        return total

    async def _drive(self, steps: Steps[T]) -> T:
        result: Any = None
        thrown: Exception | None = None
        try:
            while True:
                name, args = steps.throw(thrown) if thrown is not None else steps.send(result)
                thrown = None
                try:
                    result = await getattr(self.transactions, name)(*args)
                except Exception as exc:  # the steps may answer it (a key already used)
                    thrown = exc
        except StopIteration as done:
            return cast(T, done.value)
