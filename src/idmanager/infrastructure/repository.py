"""The SQLAlchemy repository. Allocation is one statement; nothing here ever commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Executable, Row, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ..domain.entity import HEALTH_CHECK_PREFIX, IdManager
from ..domain.errors import ConflictError, StorageError
from ..domain.format import MAX_ORDINAL, IdFormat
from ..domain.repository import AuditEntry, IdManagerRepository
from .models import IdManagerAuditModel, IdManagerModel

T = TypeVar("T")
_PROBE_SCOPE = "_health_"
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


_NEW_ROW_KEYS = (
    "scope",
    "prefix",
    "last_value",
    "separator",
    "letter_width",
    "digit_width",
    "created_by",
)


def _new_row(
    scope: str, prefix: str, fmt: IdFormat, *, last_value: int, created_by: str | None = None
) -> dict[str, Any]:
    return {
        "scope": scope,
        "prefix": prefix,
        "last_value": last_value,
        "separator": fmt.separator,
        "letter_width": fmt.letter_width,
        "digit_width": fmt.digit_width,
        "created_by": created_by,
    }


# Failures of the connection or the server, as opposed to a statement the database refused.
_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, OSError, TimeoutError)
_REFUSED = ("already exists", "syntax error", "no such column")
_MISSING_TABLE = ("does not exist", "doesn't exist", "no such table")


def _first_line(exc: BaseException) -> tuple[BaseException, str]:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return orig, text.splitlines()[0] if text else type(orig).__name__


def _is_missing_schema(text: str) -> bool:
    # PostgreSQL: relation "id_managers" does not exist; SQLite: no such table: id_managers;
    # MySQL/MariaDB: Table 'db.id_managers' doesn't exist.
    return "id_manager" in text and any(marker in text for marker in _MISSING_TABLE)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn database and connection failures into :class:`StorageError`, once, here."""
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        orig, text = _first_line(exc)
        if _is_missing_schema(text):
            raise StorageError(
                "Database not migrated: the id_managers table does not exist; "
                "run `idmanager migrate` first"
            ) from exc
        # SQLite reports refused statements as OperationalError too: those are not outages.
        refused = any(marker in text for marker in _REFUSED)
        kind = "unavailable" if isinstance(exc, _UNAVAILABLE) and not refused else "error"
        raise StorageError(f"Database {kind}: {type(orig).__name__}: {text}") from exc


_MYSQL_OUT_OF_RANGE = 1690


def _fits(last_value: int, count: int) -> bool:
    return last_value <= MAX_ORDINAL - count


def _allocation_statements(dialect: str) -> dict[str, Executable]:
    """Build the allocation statements of ``dialect`` once, with bound parameters.

    Building a statement costs more than the database round trip it makes, so the
    allocation path only binds values to these.
    """
    t = _TABLE.c
    # PostgreSQL would fail on a BIGINT overflow, but SQLite silently turns the sum into a
    # REAL and stores it: guard in the statement, on both.
    has_room = t.last_value <= bindparam("room")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(_TABLE).values({name: bindparam(name) for name in _NEW_ROW_KEYS})
    allocate = stmt.on_conflict_do_update(
        index_elements=[t.scope, t.prefix],
        set_={
            "last_value": t.last_value + stmt.excluded.last_value,
            "updated_at": func.current_timestamp(),
        },
        where=t.is_active & has_room,
    ).returning(*_COLUMNS)
    allocate_existing = (
        update(_TABLE)
        .where(t.scope == bindparam("key_scope"), t.prefix == bindparam("key_prefix"))
        .where(t.is_active, has_room)
        .values(last_value=t.last_value + bindparam("count"), updated_at=func.current_timestamp())
        .returning(*_COLUMNS)
    )
    return {"allocate": allocate, "allocate_existing": allocate_existing}


_STATEMENTS: dict[str, dict[str, Executable]] = {}


def _statement(dialect: str, name: str) -> Executable:
    if dialect not in _STATEMENTS:
        _STATEMENTS[dialect] = _allocation_statements(dialect)
    return _STATEMENTS[dialect][name]


def _exhausted(prefix: str, count: int) -> ConflictError:
    return ConflictError(
        f"Prefix {prefix} cannot issue {count:,} more IDs: it would pass the last ID a "
        f"sequence can reach (ordinal {MAX_ORDINAL:,})"
    )


def _driver_code(exc: BaseException) -> object:
    orig = getattr(exc.__cause__, "orig", None)
    args = getattr(orig, "args", ())
    return args[0] if args else None


class IdManagerRepositoryImpl(IdManagerRepository):
    """Sequences stored in ``id_managers`` through the caller's session (sync or async).

    The repository joins the transaction of the session (or connection) and never commits it.
    """

    def __init__(self, session: Session | AsyncSession | Connection | AsyncConnection) -> None:
        self._async = session if isinstance(session, AsyncSession | AsyncConnection) else None
        sync: Session | Connection | None
        if isinstance(session, AsyncSession):
            sync = session.sync_session
        elif isinstance(session, AsyncConnection):
            sync = session.sync_connection
        else:
            sync = session
        if sync is None:
            raise ValueError("The async connection is not connected")
        self.session: Session | Connection = sync
        self._dialect: str | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._async is None:
            return fn()
        with translate_errors():
            return await self._async.run_sync(lambda _sync: fn())

    @property
    def dialect(self) -> str:
        if self._dialect is None:
            bind = self.session.get_bind() if isinstance(self.session, Session) else self.session
            self._dialect = bind.dialect.name
        return self._dialect

    def _execute(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        # Through the session's Connection: same transaction, without the ORM's per-statement
        # machinery, which a Core statement does not need.
        with translate_errors():
            connection = (
                self.session.connection() if isinstance(self.session, Session) else self.session
            )
            return connection.execute(statement, params)

    def allocate(
        self, scope: str, prefix: str, count: int, *, create: bool, fmt: IdFormat
    ) -> IdManager | None:
        if self.dialect in ("mysql", "mariadb"):
            return self._allocate_mysql(scope, prefix, count, create=create, fmt=fmt)
        room = MAX_ORDINAL - count
        if create:
            params = _new_row(scope, prefix, fmt, last_value=count) | {"room": room}
        else:
            params = {"key_scope": scope, "key_prefix": prefix, "count": count, "room": room}
        statement = _statement(self.dialect, "allocate" if create else "allocate_existing")
        row = self._execute(statement, params).first()
        if row is None:
            self._check_room(scope, prefix, count)
            return None
        return _entity(row)

    def _check_room(self, scope: str, prefix: str, count: int) -> None:
        """Raise if an allocation was refused because the sequence would overflow (rare)."""
        existing = self.get(scope, prefix)
        if existing is not None and existing.is_active and not _fits(existing.last_value, count):
            raise _exhausted(prefix, count)

    def _allocate_mysql(
        self, scope: str, prefix: str, count: int, *, create: bool, fmt: IdFormat
    ) -> IdManager | None:
        # Two statements: MySQL has no RETURNING, and MariaDB's INSERT ... RETURNING is only
        # documented to return inserted rows, not the row an ON DUPLICATE KEY UPDATE changed.
        # The write locks the row until the transaction ends, so no other allocation can
        # slip in before the read. The read must be a locking one (FOR UPDATE): a plain read
        # under REPEATABLE READ sees the transaction's snapshot, which for a prefix that was
        # deactivated after the snapshot shows it still active with an old last_value, and
        # would hand out an ID that was already issued.
        # An overflow of last_value fails the statement (error 1690); it must never be
        # silently skipped here, since the read below could not tell.
        # Known InnoDB limit: when the transaction that *created* a prefix rolls back while
        # others wait to allocate from that new prefix, InnoDB's gap locks make all but one
        # of the waiters fail with a deadlock (1213, a StorageError; retry the transaction).
        # Existing prefixes, and PostgreSQL and SQLite, do not have this problem.
        t = _TABLE.c
        try:
            if create:
                stmt = mysql_insert(_TABLE).values(_new_row(scope, prefix, fmt, last_value=count))
                # MySQL evaluates the assignments left to right: is_active is not among them.
                self._execute(
                    stmt.on_duplicate_key_update(
                        last_value=func.if_(t.is_active, t.last_value + count, t.last_value),
                        updated_at=func.if_(t.is_active, func.current_timestamp(), t.updated_at),
                    )
                )
            else:
                result = self._execute(
                    update(_TABLE)
                    .where(t.scope == scope, t.prefix == prefix, t.is_active)
                    .values(last_value=t.last_value + count, updated_at=func.current_timestamp())
                )
                if result.rowcount == 0:
                    return None
        except StorageError as exc:
            if _driver_code(exc) == _MYSQL_OUT_OF_RANGE:
                raise _exhausted(prefix, count) from exc
            raise
        manager = self.get(scope, prefix, for_update=True)
        return manager if manager is not None and manager.is_active else None

    def release(self, scope: str, prefix: str, *, expected: int, new: int) -> bool:
        t = _TABLE.c
        result = self._execute(
            update(_TABLE)
            .where(t.scope == scope, t.prefix == prefix, t.last_value == expected)
            .values(last_value=new, updated_at=func.current_timestamp())
        )
        return bool(result.rowcount == 1)

    def get(self, scope: str, prefix: str, *, for_update: bool = False) -> IdManager | None:
        t = _TABLE.c
        statement = select(*_COLUMNS).where(t.scope == scope, t.prefix == prefix)
        if for_update and self.dialect != "sqlite":
            statement = statement.with_for_update()
        row = self._execute(statement).first()
        return _entity(row) if row else None

    def ensure(self, scope: str, prefix: str, fmt: IdFormat, created_by: str | None) -> None:
        values = _new_row(scope, prefix, fmt, last_value=0, created_by=created_by)
        if self.dialect in ("mysql", "mariadb"):
            # Not INSERT IGNORE: it would also turn errors (a value too long) into warnings.
            stmt = mysql_insert(_TABLE).values(values)
            self._execute(stmt.on_duplicate_key_update(id=_TABLE.c.id))
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
        # SQLite's SUM of integers fails ("integer overflow") past 2**63, which a single
        # sequence near its end reaches; PostgreSQL and MySQL sum BIGINTs into decimals.
        # On SQLite, sum the high and the low 32 bits apart: each sum fits, the total is exact.
        split = self.dialect == "sqlite"
        parts = (
            [t.last_value.op(">>")(32), t.last_value.op("&")(0xFFFFFFFF)]
            if split
            else [t.last_value]
        )
        statement = select(func.count(), *(func.coalesce(func.sum(p), 0) for p in parts)).where(
            t.prefix != HEALTH_CHECK_PREFIX
        )
        if scope is not None:
            statement = statement.where(t.scope == scope)
        count, *sums = self._execute(statement).one()
        total = (int(sums[0]) << 32) + int(sums[1]) if split else int(sums[0])
        return int(count), total

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
        # Each probe uses a scope of its own, so concurrent health checks never wait for or
        # deadlock with each other: on MySQL/MariaDB, inserts of one new key that meet a
        # rolled-back insert deadlock, and a deadlock aborts the caller's whole transaction.
        scope = f"{_PROBE_SCOPE}{uuid.uuid4().hex}"
        with translate_errors():
            savepoint = self.session.begin_nested()
        try:
            manager = self.allocate(scope, prefix, 1, create=True, fmt=fmt)
        except BaseException:
            # The failure may have ended the transaction and its savepoint (MySQL rolls the
            # whole transaction back on a deadlock): report it, not the failed rollback.
            with suppress(SQLAlchemyError):
                savepoint.rollback()
            raise
        with translate_errors():
            savepoint.rollback()
        if manager is None:
            raise StorageError(f"The health check sequence {prefix} is deactivated")
        return manager.last_value
