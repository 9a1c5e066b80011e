"""An in-memory ``IdManagerRepository``: the storage contract without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from idmanager.domain.entity import HEALTH_CHECK_PREFIX, IdManager
from idmanager.domain.errors import IdManagerError, StorageError
from idmanager.domain.format import IdFormat
from idmanager.domain.repository import AuditEntry, IdManagerRepository


def _copy(manager: IdManager) -> IdManager:
    # Hand out copies, as a database hands out rows: callers mutating them change nothing.
    return replace(manager, extra=dict(manager.extra))


class FakeRepository(IdManagerRepository):
    """Sequences in a dict, audit entries in a list, and every call recorded by name.

    Set ``fail`` to make every storage call raise it, as an unreachable database would.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], IdManager] = {}
        self.audit: list[AuditEntry] = []
        self.calls: list[str] = []
        self.fail: IdManagerError | None = None
        self._next_row_id = 1

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    def _create(self, scope: str, prefix: str, fmt: IdFormat, created_by: str | None) -> IdManager:
        now = datetime.now(UTC)
        row = IdManager(
            prefix,
            scope,
            format=fmt,
            id=self._next_row_id,
            created_at=now,
            updated_at=now,
            created_by=created_by,
        )
        self._next_row_id += 1
        self.rows[scope, prefix] = row
        return row

    def allocate(
        self, scope: str, prefix: str, count: int, *, create: bool, fmt: IdFormat
    ) -> IdManager | None:
        self._call("allocate")
        row = self.rows.get((scope, prefix))
        if row is None:
            if not create:
                return None
            row = self._create(scope, prefix, fmt, None)
        if not row.is_active:
            return None
        row.last_value += count
        row.updated_at = datetime.now(UTC)
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

    def ensure(self, scope: str, prefix: str, fmt: IdFormat, created_by: str | None) -> None:
        self._call("ensure")
        if (scope, prefix) not in self.rows:
            self._create(scope, prefix, fmt, created_by)

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

    def list(
        self, *, scope: str | None, skip: int, limit: int, active_only: bool
    ) -> list[IdManager]:
        self._call("list")
        rows = [r for r in self._user_rows(scope) if r.is_active or not active_only]
        return [_copy(r) for r in rows[skip : skip + limit]]

    def totals(self, *, scope: str | None) -> tuple[int, int]:
        self._call("totals")
        rows = self._user_rows(scope)
        return len(rows), sum(r.last_value for r in rows)

    def add_audit(self, entry: AuditEntry) -> None:
        self._call("add_audit")
        self.audit.append(entry)

    def probe(self, prefix: str, fmt: IdFormat) -> int:
        self._call("probe")
        key = ("", prefix)
        saved = self.rows.get(key)
        saved = _copy(saved) if saved else None
        try:
            manager = self.allocate("", prefix, 1, create=True, fmt=fmt)
        finally:  # the savepoint's rollback
            if saved is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = saved
        if manager is None:
            raise StorageError(f"The health check sequence {prefix} is deactivated")
        return manager.last_value

    def snapshot(self) -> dict[tuple[str, str], tuple[int, bool, IdFormat]]:
        """Return what the storage holds, to compare before and after an operation."""
        return {k: (r.last_value, r.is_active, r.format) for k, r in self.rows.items()}
