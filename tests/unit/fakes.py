"""An in-memory storage: the repository and transaction contracts without a database."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from idmanager.domain.entity import HEALTH_CHECK_PREFIX, IdManager
from idmanager.domain.errors import IdManagerError
from idmanager.domain.format import DEFAULT_FORMAT, MAX_ORDINAL, IdFormat
from idmanager.domain.repository import (
    AsyncTransactions,
    AuditEntry,
    AuditQuery,
    Claim,
    IdManagerRepository,
    KeyAlreadyUsed,
    Remembered,
    SequenceQuery,
    StoredAudit,
    Transactions,
)

T = TypeVar("T")


def _copy(manager: IdManager) -> IdManager:
    # Hand out copies, as a database hands out rows: callers mutating them change nothing.
    return replace(manager)


class FakeRepository(IdManagerRepository):
    """Sequences in a dict, audit entries in a list, and every call recorded by name.

    Set ``fail`` to make every storage call raise it, as an unreachable database would.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], IdManager] = {}
        self.audit: list[StoredAudit] = []
        self.answers: dict[tuple[str, str], tuple[datetime, Remembered]] = {}
        self.calls: list[str] = []
        self.fail: IdManagerError | None = None
        self._next_row_id = 1

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        self._call("allocate")
        row = self.rows.get((scope, prefix))
        if row is None or not row.is_active or row.last_value > MAX_ORDINAL - count:
            return None
        row.last_value += count
        row.updated_at = datetime.now(UTC)
        return _copy(row)

    def insert(self, manager: IdManager) -> IdManager | None:
        self._call("insert")
        if (manager.scope, manager.prefix) in self.rows:
            return None
        now = datetime.now(UTC)
        row = replace(manager, id=self._next_row_id, created_at=now, updated_at=now)
        self._next_row_id += 1
        self.rows[manager.scope, manager.prefix] = row
        return _copy(row)

    def release(self, scope: str, prefix: str, *, expected: int, new: int) -> bool:
        self._call("release")
        row = self.rows.get((scope, prefix))
        if row is None or row.last_value != expected:
            return False
        row.last_value = new
        return True

    def get(self, scope: str, prefix: str, *, for_update: bool = False) -> IdManager | None:
        self._call("get")
        row = self.rows.get((scope, prefix))
        return _copy(row) if row else None

    def update(self, manager: IdManager) -> None:
        self._call("update")
        row = self.rows.get((manager.scope, manager.prefix))
        if row is not None:  # like an UPDATE … WHERE: a missing row stays missing
            row.last_value = manager.last_value
            row.is_active = manager.is_active
            row.format = manager.format
            row.updated_at = datetime.now(UTC)

    def _user_rows(self, scope: str | None) -> list[IdManager]:
        return [
            row
            for (row_scope, prefix), row in sorted(self.rows.items())
            if prefix != HEALTH_CHECK_PREFIX and (scope is None or row_scope == scope)
        ]

    def list_sequences(self, query: SequenceQuery) -> list[IdManager]:
        self._call("list_sequences")
        rows = [
            r
            for r in self._user_rows(query.scope)
            if (query.active is None or r.is_active == query.active)
            and (query.scopes is None or any(fnmatchcase(r.scope, p) for p in query.scopes))
            and (not query.search or query.search in r.prefix)
            and (not query.template or r.template == query.template)
        ]
        return [_copy(r) for r in rows[query.skip : query.skip + query.limit]]

    def overlapping(self, scope: str, prefix: str) -> list[IdManager]:
        self._call("overlapping")
        return [
            _copy(row)
            for (row_scope, name), row in sorted(self.rows.items())
            if row_scope == scope
            and not row.format.separator
            and name != prefix
            and (name.startswith(prefix) or prefix.startswith(name))
        ]

    def totals(self, *, scope: str | None) -> tuple[int, int]:
        self._call("totals")
        rows = self._user_rows(scope)
        return len(rows), sum(r.last_value for r in rows)

    def add_audit(self, entry: AuditEntry) -> None:
        self._call("add_audit")
        self.audit.append(
            StoredAudit(len(self.audit) + 1, datetime.now(UTC), entry, DEFAULT_FORMAT)
        )

    def list_audit(self, query: AuditQuery) -> list[StoredAudit]:
        self._call("list_audit")
        found = []
        for stored in reversed(self.audit):
            entry = stored.entry
            row = self.rows.get((entry.scope, entry.prefix))
            wanted = (
                (query.scope is None or entry.scope == query.scope)
                and (query.scopes is None or any(fnmatchcase(entry.scope, p) for p in query.scopes))
                and (query.prefix is None or entry.prefix == query.prefix)
                and (query.actor is None or entry.actor == query.actor)
                and (query.action is None or entry.action == query.action)
                and (query.since is None or stored.at >= query.since)
                and (query.until is None or stored.at < query.until)
                and (query.before is None or stored.id < query.before)
            )
            if wanted:
                found.append(replace(stored, format=row.format if row else DEFAULT_FORMAT))
        return found[: query.limit]

    def remember(self, claim: Claim, status: int, answer: str) -> None:
        self._call("remember")
        key = (claim.owner, claim.key)
        if key in self.answers:
            raise KeyAlreadyUsed
        self.answers[key] = (datetime.now(UTC), Remembered(claim.fingerprint, status, answer))

    def recall(self, owner: str, key: str) -> Remembered | None:
        self._call("recall")
        found = self.answers.get((owner, key))
        return found[1] if found else None

    def forget(self, before: datetime, limit: int, owner: str | None = None) -> int:
        self._call("forget")
        old = [
            key for key, (at, _) in self.answers.items() if at < before and owner in (None, key[0])
        ][:limit]
        for key in old:
            del self.answers[key]
        return len(old)

    def probe(self, prefix: str, fmt: IdFormat) -> int:
        self._call("probe")
        return 1

    def entries(self) -> list[AuditEntry]:
        """Return the audit entries recorded so far, oldest first."""
        return [stored.entry for stored in self.audit]

    def snapshot(self) -> dict[tuple[str, str], tuple[int, bool, IdFormat]]:
        """Return what the storage holds, to compare before and after an operation."""
        return {k: (r.last_value, r.is_active, r.format) for k, r in self.rows.items()}


class FakeTransactions(Transactions):
    """Transactions over a :class:`FakeRepository`: a rollback restores what was there.

    One transaction at a time, as SQLite runs them; ``commits`` and ``rollbacks`` count them.
    """

    def __init__(self, repository: FakeRepository | None = None) -> None:
        self.repository = repository or FakeRepository()
        self.commits = 0
        self.rollbacks = 0
        self._lock = threading.Lock()

    def run(self, work: Callable[[IdManagerRepository], T], *, commit: bool = True) -> T:
        with self._lock:
            repository = self.repository
            saved = (
                copy.deepcopy(repository.rows),
                list(repository.audit),
                dict(repository.answers),
            )
            try:
                result = work(self.repository)
            except BaseException:
                self._restore(saved)
                raise
            if commit:
                self.commits += 1
            else:
                self._restore(saved)
            return result

    def _restore(self, saved: tuple[Any, ...]) -> None:
        self.rollbacks += 1
        self.repository.rows, self.repository.audit, self.repository.answers = saved


class AsyncFakeTransactions(AsyncTransactions):
    """The async face of :class:`FakeTransactions` (the same storage)."""

    def __init__(self, sync: FakeTransactions | None = None) -> None:
        self.sync = sync or FakeTransactions()

    @property
    def repository(self) -> FakeRepository:
        return self.sync.repository

    async def run(self, work: Callable[[IdManagerRepository], T], *, commit: bool = True) -> T:
        return self.sync.run(work, commit=commit)
