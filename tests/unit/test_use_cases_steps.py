"""What an allocation costs the storage, over the fake: one statement when the sequence exists.

An allocation without an Idempotency-Key tries its one statement before anything else; only
a sequence it did not find (or a lock timeout, which needs a transaction) goes on to a
transaction, which creates the sequence. The real databases count their statements in
``tests/integration/test_contract.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from idmanager.application.options import ServiceOptions
from idmanager.application.use_cases import IdManagerUseCases, SyncIdManagerUseCases
from idmanager.domain.entity import IdManager
from idmanager.domain.errors import InvalidCountError, InvalidPrefixError

from .fakes import AsyncFakeTransactions, FakeTransactions


class Counted(FakeTransactions):
    """The fake storage, counting one-statement allocations and transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.statements: list[tuple[str, str, int]] = []
        self.transactions = 0

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        """One statement, committed by itself: not a transaction."""
        self.statements.append((scope, prefix, count))
        with self._lock:
            return self.repository.allocate(scope, prefix, count)

    def run(self, work: Any, *, commit: bool = True) -> Any:
        self.transactions += 1
        return super().run(work, commit=commit)

    def counts(self) -> tuple[int, int]:
        return len(self.statements), self.transactions


class AsyncCounted(AsyncFakeTransactions):
    def __init__(self) -> None:
        super().__init__(Counted())

    async def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        return self.counted.allocate(scope, prefix, count)

    @property
    def counted(self) -> Counted:
        assert isinstance(self.sync, Counted)
        return self.sync


def test_an_existing_sequence_costs_one_statement_and_no_transaction() -> None:
    storage = Counted()
    use_cases = SyncIdManagerUseCases(storage)
    assert list(use_cases.allocate("CUS")) == ["CUS-AAA0001"]  # creates it
    before = storage.counts()

    assert list(use_cases.allocate("cus", 3, scope="acme")) == [
        "CUS-AAA0001",
        "CUS-AAA0002",
        "CUS-AAA0003",
    ]  # another scope: a sequence of its own, created
    assert list(use_cases.allocate("CUS", 2)) == ["CUS-AAA0002", "CUS-AAA0003"]

    statements, transactions = storage.counts()
    assert (statements - before[0], transactions - before[1]) == (2, 1)
    # The key is validated and resolved before the statement: the prefix upper-cased.
    assert storage.statements[-1] == ("", "CUS", 2)


def test_a_missing_sequence_is_tried_once_then_created_in_one_transaction() -> None:
    storage = Counted()
    ids = SyncIdManagerUseCases(storage).allocate("INV", 2, actor="alice")

    assert list(ids) == ["INV-AAA0001", "INV-AAA0002"]
    assert storage.counts() == (1, 1)  # not tried a second time by the steps
    assert storage.repository.rows[("", "INV")].created_by == "alice"


def test_a_lock_timeout_allocates_in_a_transaction() -> None:
    storage = Counted()
    use_cases = SyncIdManagerUseCases(storage, ServiceOptions(lock_timeout_ms=500))
    use_cases.allocate("PO")
    assert list(use_cases.allocate("PO")) == ["PO-AAA0002"]
    assert storage.counts() == (0, 2)


@pytest.mark.parametrize(
    ("prefix", "count", "error"),
    [("bad prefix!", 1, InvalidPrefixError), ("CUS", 0, InvalidCountError)],
)
def test_bad_input_reaches_no_storage(prefix: str, count: int, error: type[Exception]) -> None:
    storage = Counted()
    with pytest.raises(error):
        SyncIdManagerUseCases(storage).allocate(prefix, count)
    assert storage.counts() == (0, 0)


async def test_async_allocations_cost_the_same() -> None:
    storage = AsyncCounted()
    use_cases = IdManagerUseCases(storage)
    assert list(await use_cases.allocate("SO")) == ["SO-AAA0001"]
    assert list(await use_cases.allocate("SO", 2)) == ["SO-AAA0002", "SO-AAA0003"]
    assert storage.counted.counts() == (2, 1)
    with pytest.raises(InvalidCountError):
        await use_cases.allocate("SO", -1)
    assert storage.counted.counts() == (2, 1)
