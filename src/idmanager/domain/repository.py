"""The repository interface: what the application needs from storage, in domain terms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .entity import IdManager
from .format import IdFormat

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change of a sequence: a reset, a (de)activation or a reconfiguration."""

    scope: str
    prefix: str
    action: str
    old_value: int | None
    new_value: int | None
    actor: str | None = None
    detail: str | None = None


class IdManagerRepository(ABC):
    """Sequence storage. Implementations never commit: the caller owns the transaction."""

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, whose repository calls are synchronous, where this storage allows them.

        The SQLAlchemy implementation runs it on an async session's greenlet bridge; storage
        without I/O just calls it.
        """
        return fn()

    @abstractmethod
    def allocate(
        self, scope: str, prefix: str, count: int, *, create: bool, fmt: IdFormat
    ) -> IdManager | None:
        """Add ``count`` to the sequence in one atomic statement and return its new state.

        Creates the sequence with ``fmt`` when ``create`` is set and it does not exist.
        Returns None, changing nothing, when the sequence is missing (and not created) or
        inactive.
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
    def ensure(self, scope: str, prefix: str, fmt: IdFormat, created_by: str | None) -> None:
        """Create the sequence with nothing issued if it does not exist."""

    @abstractmethod
    def update(self, manager: IdManager) -> None:
        """Store ``last_value``, ``is_active`` and the format of an existing sequence."""

    @abstractmethod
    def list(
        self, *, scope: str | None, skip: int, limit: int, active_only: bool
    ) -> list[IdManager]:
        """Return sequences ordered by scope and prefix, leaving out reserved prefixes."""

    @abstractmethod
    def totals(self, *, scope: str | None) -> tuple[int, int]:
        """Return the number of user sequences and the IDs they have issued in all."""

    @abstractmethod
    def add_audit(self, entry: AuditEntry) -> None:
        """Record a change."""

    @abstractmethod
    def probe(self, prefix: str, fmt: IdFormat) -> int:
        """Allocate one ID of ``prefix`` and undo it, leaving nothing behind; return its ordinal."""
