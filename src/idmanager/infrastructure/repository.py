"""The SQLAlchemy repository. Allocation is one statement; nothing here ever commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Row, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..domain.entity import HEALTH_CHECK_PREFIX, IdManager
from ..domain.errors import StorageError
from ..domain.format import IdFormat
from ..domain.repository import AuditEntry, IdManagerRepository
from .models import IdManagerAuditModel, IdManagerModel

T = TypeVar("T")
_TABLE = cast(Table, IdManagerModel.__table__)
_AUDIT = cast(Table, IdManagerAuditModel.__table__)
_COLUMNS = tuple(_TABLE.c)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite and MySQL return naive timestamps; the database wrote them in UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _entity(row: Row[Any]) -> IdManager:
    m = row._mapping
    return IdManager(
        prefix=m["prefix"],
        scope=m["scope"],
        last_value=m["last_value"],
        is_active=bool(m["is_active"]),
        format=IdFormat(m["separator"], m["letter_width"], m["digit_width"]),
        id=m["id"],
        created_at=_utc(m["created_at"]),
        updated_at=_utc(m["updated_at"]),
        created_by=m["created_by"],
    )


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "id_managers" in text and ("does not exist" in text or "no such table" in text):
        return "the id_managers table does not exist; run `idmanager migrate` first"
    return f"{type(orig).__name__}: {text}"


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn database and connection failures into :class:`StorageError`, once, here."""
    try:
        yield
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise StorageError(f"Database unavailable: {_describe(exc)}") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"Database error: {_describe(exc)}") from exc


class IdManagerRepositoryImpl(IdManagerRepository):
    """Sequences stored in ``id_managers`` through the caller's session (sync or async).

    The repository joins the session's transaction and never commits it.
    """

    def __init__(self, session: Session | AsyncSession) -> None:
        self._async = session if isinstance(session, AsyncSession) else None
        self.session: Session = session.sync_session if self._async else session  # type: ignore[assignment,union-attr]
        self._dialect: str | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._async is None:
            return fn()
        with translate_errors():
            return await self._async.run_sync(lambda _session: fn())

    @property
    def dialect(self) -> str:
        if self._dialect is None:
            self._dialect = self.session.get_bind().dialect.name
        return self._dialect

    def _execute(self, statement: Any) -> Any:
        with translate_errors():
            return self.session.execute(statement)

    def allocate(
        self, scope: str, prefix: str, count: int, *, create: bool, fmt: IdFormat
    ) -> IdManager | None:
        t = _TABLE.c
        if not create:
            statement: Any = (
                update(_TABLE)
                .where(t.scope == scope, t.prefix == prefix, t.is_active)
                .values(last_value=t.last_value + count, updated_at=func.current_timestamp())
                .returning(*_COLUMNS)
            )
            row = self._execute(statement).first()
            return _entity(row) if row else None
        values = {
            "scope": scope,
            "prefix": prefix,
            "last_value": count,
            "separator": fmt.separator,
            "letter_width": fmt.letter_width,
            "digit_width": fmt.digit_width,
        }
        if self.dialect in ("mysql", "mariadb"):
            return self._allocate_mysql(values, count)
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(_TABLE).values(values)
        statement = stmt.on_conflict_do_update(
            index_elements=[t.scope, t.prefix],
            set_={
                "last_value": t.last_value + stmt.excluded.last_value,
                "updated_at": func.current_timestamp(),
            },
            where=t.is_active,
        ).returning(*_COLUMNS)
        row = self._execute(statement).first()
        return _entity(row) if row else None

    def _allocate_mysql(self, values: dict[str, Any], count: int) -> IdManager | None:
        # MySQL has no RETURNING on upserts: the upsert locks the row, so reading it back in
        # the same transaction sees exactly this allocation's result.
        t = _TABLE.c
        stmt = mysql_insert(_TABLE).values(values)
        self._execute(
            stmt.on_duplicate_key_update(
                last_value=func.if_(t.is_active, t.last_value + count, t.last_value)
            )
        )
        manager = self.get(values["scope"], values["prefix"])
        return manager if manager is not None and manager.is_active else None

    def get(self, scope: str, prefix: str, *, for_update: bool = False) -> IdManager | None:
        t = _TABLE.c
        statement = select(*_COLUMNS).where(t.scope == scope, t.prefix == prefix)
        if for_update and self.dialect != "sqlite":
            statement = statement.with_for_update()
        row = self._execute(statement).first()
        return _entity(row) if row else None

    def ensure(self, scope: str, prefix: str, fmt: IdFormat, created_by: str | None) -> None:
        values = {
            "scope": scope,
            "prefix": prefix,
            "last_value": 0,
            "separator": fmt.separator,
            "letter_width": fmt.letter_width,
            "digit_width": fmt.digit_width,
            "created_by": created_by,
        }
        if self.dialect in ("mysql", "mariadb"):
            self._execute(mysql_insert(_TABLE).values(values).prefix_with("IGNORE"))
            return
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._execute(insert(_TABLE).values(values).on_conflict_do_nothing())

    def update(self, manager: IdManager) -> None:
        t = _TABLE.c
        self._execute(
            update(_TABLE)
            .where(t.scope == manager.scope, t.prefix == manager.prefix)
            .values(
                last_value=manager.last_value,
                is_active=manager.is_active,
                separator=manager.format.separator,
                letter_width=manager.format.letter_width,
                digit_width=manager.format.digit_width,
                updated_at=func.current_timestamp(),
            )
        )

    def list(
        self, *, scope: str | None, skip: int, limit: int, active_only: bool
    ) -> list[IdManager]:
        t = _TABLE.c
        statement = select(*_COLUMNS).where(t.prefix != HEALTH_CHECK_PREFIX)
        if scope is not None:
            statement = statement.where(t.scope == scope)
        if active_only:
            statement = statement.where(t.is_active)
        statement = statement.order_by(t.scope, t.prefix).offset(skip).limit(limit)
        return [_entity(row) for row in self._execute(statement)]

    def totals(self, *, scope: str | None) -> tuple[int, int]:
        t = _TABLE.c
        statement = select(func.count(), func.coalesce(func.sum(t.last_value), 0)).where(
            t.prefix != HEALTH_CHECK_PREFIX
        )
        if scope is not None:
            statement = statement.where(t.scope == scope)
        count, total = self._execute(statement).one()
        return int(count), int(total)

    def add_audit(self, entry: AuditEntry) -> None:
        self._execute(
            _AUDIT.insert().values(
                scope=entry.scope,
                prefix=entry.prefix,
                action=entry.action,
                old_value=entry.old_value,
                new_value=entry.new_value,
                actor=entry.actor,
                detail=entry.detail,
            )
        )

    def probe(self, prefix: str, fmt: IdFormat) -> int:
        # A savepoint keeps the caller's pending work untouched; rolling it back leaves no row.
        with translate_errors():
            savepoint = self.session.begin_nested()
        try:
            manager = self.allocate("", prefix, 1, create=True, fmt=fmt)
        finally:
            with translate_errors():
                savepoint.rollback()
        if manager is None:
            raise StorageError(f"The health check sequence {prefix} is deactivated")
        return manager.last_value
