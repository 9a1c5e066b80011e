"""What the application needs from storage, in domain terms: sequences, audit, transactions."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from .entity import IdManager
from .format import IdFormat, IdRange

T = TypeVar("T")


class AuditAction(StrEnum):
    """The kinds of change the audit trail records."""

    CREATE = "create"  # created by its first allocation
    REGISTER = "register"  # created by an explicit registration, with its format
    CONFIGURE = "configure"
    RESET = "reset"
    ACTIVATE = "activate"
    DEACTIVATE = "deactivate"
    IMPORT = "import"  # continued from a legacy database
    RELEASE = "release"  # a block cache handed back IDs it never issued


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change of a sequence, to be recorded."""

    scope: str
    prefix: str
    action: AuditAction
    old_value: int | None
    new_value: int | None
    actor: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class StoredAudit:
    """An audit entry as stored: its number, its time, and the format of its sequence."""

    id: int
    at: datetime
    entry: AuditEntry
    format: IdFormat


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which audit entries to read: every filter is optional; newest first."""

    scope: str | None = None
    scopes: tuple[str, ...] | None = None  # glob patterns (* and ?); None: any scope
    prefix: str | None = None
    actor: str | None = None
    action: AuditAction | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None  # keyset cursor: only entries numbered below it
    limit: int = 100


@dataclass(frozen=True, slots=True)
class SequenceQuery:
    """Which sequences to list, ordered by scope and prefix."""

    scope: str | None = None  # None: every scope
    scopes: tuple[str, ...] | None = None  # glob patterns (* and ?); None: any scope
    active: bool | None = None  # None: active and inactive
    search: str | None = None  # a part of the prefix
    template: str | None = None  # only the periods of this template
    skip: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class Claim:
    """A request sent with an idempotency key: whose key, which key, which request."""

    owner: str
    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Remembered:
    """The answer given to a claimed request, kept for its repeats."""

    fingerprint: str
    status: int
    answer: str  # JSON


class KeyAlreadyUsed(Exception):
    """Raised by storage when a claim's key already has an answer (or one in flight)."""


class IdManagerRepository(ABC):
    """Sequence storage. Implementations never commit: the caller owns the transaction."""

    def creates_while_allocating(self) -> bool:
        """Return True where allocation should create a missing sequence in one statement.

        Storage where looking for a missing row locks the gap it would go in (InnoDB under
        REPEATABLE READ) deadlocks when transactions create one new sequence at once: it
        allocates and creates together instead (:meth:`allocate_or_create`).
        """
        return False

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, whose repository calls are synchronous, where this storage allows them.

        The SQLAlchemy implementation runs it on an async session's greenlet bridge; storage
        without I/O just calls it.
        """
        return fn()

    @contextmanager
    def waiting_at_most(self, milliseconds: int) -> Iterator[None]:
        """Wait at most ``milliseconds`` for locked rows inside the block (0: not at all).

        Past it, statements fail with ``BusyError``. Storage without locks ignores it.
        """
        yield

    @abstractmethod
    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        """Add ``count`` to an active sequence in one atomic statement; return its new state.

        Returns None, changing nothing, when the sequence is missing or inactive, or when
        ``count`` more would pass the last ordinal storage can hold.
        """

    def allocate_or_create(self, new: IdManager, count: int) -> tuple[IdManager | None, bool]:
        """Allocate ``count`` from ``new``'s sequence, creating it as ``new`` if missing.

        ``new`` carries ``count`` as its ``last_value``. Returns the sequence's new state
        (None, changing nothing, when it is inactive or full) and whether it was created.
        """
        manager = self.allocate(new.scope, new.prefix, count)
        if manager is not None:
            return manager, False
        created = self.insert(new)
        if created is not None:
            return created, True
        return self.allocate(new.scope, new.prefix, count), False

    @abstractmethod
    def insert(self, manager: IdManager) -> IdManager | None:
        """Create ``manager``'s sequence as given; return it as stored.

        Returns None, changing nothing, when the sequence exists already.
        """

    @abstractmethod
    def release(self, scope: str, prefix: str, *, expected: int, new: int) -> bool:
        """Set ``last_value`` to ``new`` only if it is still ``expected`` (compare-and-set).

        Returns whether it did: a block cache hands back its unused tail this way, and only
        when no other allocation happened since.
        """

    @abstractmethod
    def get(self, scope: str, prefix: str, *, for_update: bool = False) -> IdManager | None:
        """Return the sequence, locking its row until the transaction ends if asked."""

    @abstractmethod
    def update(self, manager: IdManager) -> None:
        """Store ``last_value``, ``is_active`` and the format of an existing sequence."""

    @abstractmethod
    def list_sequences(self, query: SequenceQuery) -> list[IdManager]:
        """Return sequences ordered by scope and prefix, leaving out reserved prefixes."""

    @abstractmethod
    def overlapping(self, scope: str, prefix: str) -> list[IdManager]:
        """Return the sequences of ``scope`` without a separator whose prefix starts with
        ``prefix``, or is the start of it (``prefix`` itself left out): the only ones whose
        IDs could be written like those of ``prefix``."""

    @abstractmethod
    def totals(self, *, scope: str | None) -> tuple[int, int]:
        """Return the number of user sequences and the IDs they have issued in all."""

    @abstractmethod
    def add_audit(self, entry: AuditEntry) -> None:
        """Record a change."""

    @abstractmethod
    def list_audit(self, query: AuditQuery) -> list[StoredAudit]:
        """Return the audit entries that match, newest first."""

    @abstractmethod
    def remember(self, claim: Claim, status: int, answer: str) -> None:
        """Store the answer of a claimed request, in the caller's transaction.

        Raises:
            KeyAlreadyUsed: the key already has an answer (the transaction must be rolled
                back: PostgreSQL aborts it).
        """

    @abstractmethod
    def recall(self, owner: str, key: str) -> Remembered | None:
        """Return the answer stored for ``owner``'s ``key``, if any."""

    @abstractmethod
    def forget(self, before: datetime, limit: int, owner: str | None = None) -> int:
        """Delete at most ``limit`` answers stored before ``before`` (only ``owner``'s when
        given); return how many."""

    def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        """Allocate from an existing, active sequence and remember the answer with it.

        The answer stored is :func:`allocation_answer` of the allocation. Returns None,
        changing nothing, when the sequence is missing, inactive or full.

        Raises:
            KeyAlreadyUsed: as :meth:`remember` (nothing allocated then).
        """
        manager = self.allocate(scope, prefix, count)
        if manager is not None:
            self.remember(claim, status, allocation_answer(manager.issued(count)))
        return manager

    @abstractmethod
    def probe(self, prefix: str, fmt: IdFormat) -> int:
        """Allocate one ID of ``prefix`` and undo it, leaving nothing behind; return its ordinal."""


def allocation_answer(ids: IdRange) -> str:
    """Return what an allocation's repeat needs to give the same IDs, as JSON."""
    fmt = ids.format
    return json.dumps(
        {
            "prefix": ids.prefix,
            "last": ids.last,
            "count": ids.size,
            "format": [fmt.separator, fmt.letter_width, fmt.digit_width],
        },
        separators=(",", ":"),
    )


def allocation_of(answer: str) -> IdRange:
    """Return the IDs an :func:`allocation_answer` stands for."""
    data = json.loads(answer)
    count = data["count"]
    return IdRange(data["prefix"], data["last"] - count + 1, count, IdFormat(*data["format"]))


class Transactions(ABC):
    """Runs work in a transaction of its own: committed when the work returns.

    The use cases (HTTP, CLI, library calls given an engine) reach storage only through this,
    so they run as well over a real database as over an in-memory fake.
    """

    # Conflicts with concurrent transactions that were run again (storage without any: 0).
    conflicts_retried: int = 0

    @abstractmethod
    def run(self, work: Callable[[IdManagerRepository], T], *, commit: bool = True) -> T:
        """Run ``work`` in a new transaction; commit it (or roll it back when ``commit`` is
        False, or when ``work`` raises)."""

    def claims_in_one_statement(self) -> bool:
        """Return True when an allocation and its remembered answer are one statement."""
        return False

    def run_single(self, work: Callable[[IdManagerRepository], T]) -> T:
        """Run ``work``, which makes one statement, committed before returning.

        Storage where one statement is atomic by itself may skip BEGIN and COMMIT.
        """
        return self.run(work)

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        """Allocate from an existing, active sequence, committed (:meth:`IdManagerRepository.
        allocate` on its own): the hot path, which storage may run as lean as it can."""
        return self.run_single(lambda r: r.allocate(scope, prefix, count))

    def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        """As :meth:`IdManagerRepository.allocate_remembering`, committed."""
        return self.run_single(
            lambda r: r.allocate_remembering(scope, prefix, count, claim, status)
        )


class AsyncTransactions(ABC):
    """:class:`Transactions` for asyncio: the work itself stays synchronous."""

    conflicts_retried: int = 0  # as :attr:`Transactions.conflicts_retried`

    @abstractmethod
    async def run(self, work: Callable[[IdManagerRepository], T], *, commit: bool = True) -> T:
        """Run ``work`` in a new transaction; commit it, or roll it back."""

    def claims_in_one_statement(self) -> bool:
        """Return True when an allocation and its remembered answer are one statement."""
        return False

    async def run_single(self, work: Callable[[IdManagerRepository], T]) -> T:
        """Run ``work``, which makes one statement, committed before returning."""
        return await self.run(work)

    async def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        """Allocate from an existing, active sequence, committed: the hot path."""
        return await self.run_single(lambda r: r.allocate(scope, prefix, count))

    async def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        """As :meth:`IdManagerRepository.allocate_remembering`, committed."""
        return await self.run_single(
            lambda r: r.allocate_remembering(scope, prefix, count, claim, status)
        )
