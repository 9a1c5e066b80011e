"""The SQLAlchemy repository. Allocation is one statement; nothing here ever commits."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    false,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ..domain.entity import HEALTH_CHECK_PREFIX, IdManager
from ..domain.errors import StorageError
from ..domain.format import MAX_ORDINAL, IdFormat
from ..domain.repository import (
    AuditAction,
    AuditEntry,
    AuditQuery,
    Claim,
    IdManagerRepository,
    KeyAlreadyUsed,
    Remembered,
    SequenceQuery,
    StoredAudit,
    allocation_of,
)
from .direct import allocate_on_cursor, on_cursor
from .errors import Failure, classify, translate_errors, watch_commit
from .models import IdManagerAuditModel, IdManagerModel
from .statements import COLUMNS, IDEMPOTENCY, MYSQL, SEQUENCES, named_statement, row_of

T = TypeVar("T")
_PROBE_SCOPE = "_health_"
# How a Session with several binds (``binds=``) finds the engine of these tables.
_BIND_ARGUMENTS = {"mapper": IdManagerModel}
_AUDIT = cast(Table, IdManagerAuditModel.__table__)


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
        template=m["template"],
    )


_ESCAPE = "/"  # not a backslash: MySQL reads those in string literals too


def _glob(pattern: str) -> str:
    """Return a LIKE pattern for a glob of ``*`` and ``?`` (scope patterns of API keys)."""
    escaped = pattern.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return escaped.replace("*", "%").replace("?", "_")


def _in_scopes(column: Any, patterns: tuple[str, ...], dialect: str) -> Any:
    if not patterns:
        return false()
    if dialect == "sqlite":
        # SQLite's LIKE ignores case (ACME would pass for acme): its GLOB does not, and
        # takes * and ? as they are. Scopes hold none of GLOB's other special characters.
        return or_(*(column.op("GLOB")(p) for p in patterns))
    return or_(*(column.like(_glob(p), escape=_ESCAPE) for p in patterns))


def _like(part: str) -> str:
    """Return a LIKE pattern matching ``part`` anywhere ('_' is a prefix character and a
    LIKE wildcard: escape it, and '%', and the escape)."""
    escaped = part.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


class IdManagerRepositoryImpl(IdManagerRepository):
    """Sequences stored in ``id_managers`` through the caller's session (sync or async).

    The repository joins the transaction of the session (or connection) and never commits it.
    """

    def creates_while_allocating(self) -> bool:
        return self.dialect in MYSQL

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
            session = self.session
            bind = session.get_bind(IdManagerModel) if isinstance(session, Session) else session
            self._dialect = bind.dialect.name
        return self._dialect

    def _execute(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        # Through the session's Connection: same transaction, without the ORM's per-statement
        # machinery, which a Core statement does not need.
        connection = self._connection()
        with translate_errors():
            return connection.execute(statement, params)

    def _named(self, name: str, params: dict[str, Any]) -> Any:
        return self._execute(named_statement(self.dialect, name), params)

    def _connection(self) -> Connection:
        """Return the connection of the transaction this repository works in."""
        if not isinstance(self.session, Session):
            return self.session
        with translate_errors():
            connection = self.session.connection(bind_arguments=_BIND_ARGUMENTS)
        watch_commit(connection)  # the session's owner commits, after we return
        return connection

    @contextmanager
    def waiting_at_most(self, milliseconds: int) -> Iterator[None]:
        if self.dialect == "postgresql":
            # Set for this transaction only, then put back: the caller's other statements
            # keep their own wait. 0 would mean "forever" to PostgreSQL: 1 ms is "not at all".
            saved = self._execute(
                text(
                    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', :v, true)"
                ),
                {"v": f"{max(milliseconds, 1)}ms"},
            ).scalar_one()
            try:
                yield
            finally:
                with suppress(StorageError):
                    self._execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": saved})
        elif self.dialect in MYSQL:
            # InnoDB counts whole seconds; 0 does not wait (MariaDB; MySQL waits 1 s).
            self._execute(
                text("SET @idm_wait = @@innodb_lock_wait_timeout, innodb_lock_wait_timeout = :s"),
                {"s": math.ceil(milliseconds / 1000)},
            )
            try:
                yield
            finally:
                with suppress(StorageError):
                    self._execute(text("SET innodb_lock_wait_timeout = @idm_wait"))
        else:
            # SQLite takes its one lock when the transaction begins, not per row.
            yield

    def allocate(self, scope: str, prefix: str, count: int) -> IdManager | None:
        params = {
            "key_scope": scope,
            "key_prefix": prefix,
            "count": count,
            "room": MAX_ORDINAL - count,
        }
        if self.dialect in MYSQL:
            return self._allocate_mysql(params)
        connection = self._connection()
        if on_cursor(connection):
            return allocate_on_cursor(connection, scope, prefix, count)
        with translate_errors():
            row = connection.execute(named_statement(self.dialect, "allocate"), params).first()
        return _entity(row) if row is not None else None

    def _allocate_mysql(self, params: dict[str, Any]) -> IdManager | None:
        # One statement allocates; its reply carries the new last_value. A plain read then
        # gives the rest of the row, the format above all, which no longer changes once the
        # sequence has issued IDs. Plain is right alone and in a transaction: there it sees
        # the row as this transaction's UPDATE left it. Only last_value may have moved since
        # (other allocations, run alone), and it comes from the reply.
        result = self._named("allocate", params)
        if result.rowcount == 0:  # LAST_INSERT_ID(expr) was not evaluated: no value to read
            return None
        last_value = result.lastrowid
        row = self._named("get", params).first()
        if row is None or not last_value:
            raise StorageError("The sequence's row could not be read back after its allocation")
        manager = _entity(row)
        manager.last_value = last_value
        return manager

    def insert(self, manager: IdManager) -> IdManager | None:
        values = row_of(manager)
        if self.dialect not in MYSQL:
            row = self._named("insert", values).first()
            return _entity(row) if row is not None else None
        # A no-op update of an existing row rather than a duplicate-key error: the error
        # would leave a shared lock that deadlocks with the next write of the row.
        result = self._execute(
            mysql_insert(SEQUENCES).values(values).on_duplicate_key_update(id=SEQUENCES.c.id)
        )
        if not _inserted(result):
            return None
        return self.get(manager.scope, manager.prefix, for_update=True)

    def allocate_or_create(self, new: IdManager, count: int) -> tuple[IdManager | None, bool]:
        if self.dialect not in MYSQL:
            return super().allocate_or_create(new, count)
        t = SEQUENCES.c
        may = t.is_active & (t.last_value <= MAX_ORDINAL - count)
        # Assignments run left to right and see the values already assigned: the time first,
        # while last_value still holds its old value.
        statement = (
            mysql_insert(SEQUENCES)
            .values(row_of(new))
            .on_duplicate_key_update(
                [
                    ("updated_at", func.if_(may, func.current_timestamp(), t.updated_at)),
                    ("last_value", func.if_(may, t.last_value + count, t.last_value)),
                ]
            )
        )
        result = self._execute(statement)
        created = _inserted(result)
        if not created and result.rowcount != 2:  # 2: an existing row was updated
            return None, False
        row = self._named("get_for_update", {"key_scope": new.scope, "key_prefix": new.prefix})
        found = row.first()
        return (_entity(found) if found is not None else None), created

    def release(self, scope: str, prefix: str, *, expected: int, new: int) -> bool:
        t = SEQUENCES.c
        result = self._execute(
            update(SEQUENCES)
            .where(t.scope == scope, t.prefix == prefix, t.last_value == expected)
            .values(last_value=new, updated_at=func.current_timestamp())
        )
        return bool(result.rowcount == 1)

    def get(self, scope: str, prefix: str, *, for_update: bool = False) -> IdManager | None:
        name = "get_for_update" if for_update else "get"
        row = self._named(name, {"key_scope": scope, "key_prefix": prefix}).first()
        return _entity(row) if row else None

    def update(self, manager: IdManager) -> None:
        t = SEQUENCES.c
        self._execute(
            update(SEQUENCES)
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

    def list_sequences(self, query: SequenceQuery) -> list[IdManager]:
        t = SEQUENCES.c
        statement = select(*COLUMNS).where(t.prefix != HEALTH_CHECK_PREFIX)
        if query.scope is not None:
            statement = statement.where(t.scope == query.scope)
        if query.scopes is not None:
            statement = statement.where(_in_scopes(t.scope, query.scopes, self.dialect))
        if query.active is not None:
            statement = statement.where(t.is_active == query.active)
        if query.search:
            statement = statement.where(t.prefix.like(_like(query.search), escape=_ESCAPE))
        if query.template:
            statement = statement.where(t.template == query.template)
        statement = statement.order_by(t.scope, t.prefix).offset(query.skip).limit(query.limit)
        return [_entity(row) for row in self._execute(statement)]

    def overlapping(self, scope: str, prefix: str) -> list[IdManager]:
        t = SEQUENCES.c
        starts = [prefix[:i] for i in range(1, len(prefix))]
        statement = select(*COLUMNS).where(
            t.scope == scope,
            t.separator == "",
            t.prefix != prefix,
            t.prefix.in_(starts) | t.prefix.like(_like(prefix)[1:], escape=_ESCAPE),
        )
        return [_entity(row) for row in self._execute(statement)]

    def totals(self, *, scope: str | None) -> tuple[int, int]:
        t = SEQUENCES.c
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
                action=entry.action.value,
                old_value=entry.old_value,
                new_value=entry.new_value,
                actor=entry.actor,
                detail=entry.detail,
            )
        )

    def list_audit(self, query: AuditQuery) -> list[StoredAudit]:
        a, t = _AUDIT.c, SEQUENCES.c
        # The sequence's format writes the counters as IDs; a sequence gone (never, today)
        # or never created leaves the default one.
        statement = select(_AUDIT, t.separator, t.letter_width, t.digit_width).select_from(
            _AUDIT.outerjoin(SEQUENCES, (t.scope == a.scope) & (t.prefix == a.prefix))
        )
        conditions = [
            (query.scope, a.scope),
            (query.prefix, a.prefix),
            (query.actor, a.actor),
            (query.action.value if query.action else None, a.action),
        ]
        for value, column in conditions:
            if value is not None:
                statement = statement.where(column == value)
        if query.scopes is not None:
            statement = statement.where(_in_scopes(a.scope, query.scopes, self.dialect))
        if query.since is not None:
            statement = statement.where(a.created_at >= _naive_utc(query.since, self.dialect))
        if query.until is not None:
            statement = statement.where(a.created_at < _naive_utc(query.until, self.dialect))
        if query.before is not None:
            statement = statement.where(a.id < query.before)
        statement = statement.order_by(a.id.desc()).limit(query.limit)
        return [_stored_audit(row) for row in self._execute(statement)]

    def remember(self, claim: Claim, status: int, answer: str) -> None:
        values = {
            "owner": claim.owner,
            "idem_key": claim.key,
            "fingerprint": claim.fingerprint,
            "status": status,
            "answer": answer,
        }
        with _claiming():
            self._execute(IDEMPOTENCY.insert().values(values))

    def recall(self, owner: str, key: str) -> Remembered | None:
        i = IDEMPOTENCY.c
        row = self._execute(
            select(i.fingerprint, i.status, i.answer).where(i.owner == owner, i.idem_key == key)
        ).first()
        return Remembered(row.fingerprint, row.status, row.answer) if row is not None else None

    def forget(self, before: datetime, limit: int, owner: str | None = None) -> int:
        i = IDEMPOTENCY.c
        old = select(i.id).where(i.created_at < _naive_utc(before, self.dialect))
        if owner is not None:
            old = old.where(i.owner == owner)
        ids = list(self._execute(old.order_by(i.id).limit(limit)).scalars())
        if ids:
            self._execute(IDEMPOTENCY.delete().where(i.id.in_(ids)))
        return len(ids)

    def allocate_remembering(
        self, scope: str, prefix: str, count: int, claim: Claim, status: int
    ) -> IdManager | None:
        if self.dialect != "postgresql":
            return super().allocate_remembering(scope, prefix, count, claim, status)
        params = {
            "key_scope": scope,
            "key_prefix": prefix,
            "count": count,
            "room": MAX_ORDINAL - count,
            "owner": claim.owner,
            "idem_key": claim.key,
            "fingerprint": claim.fingerprint,
            "status": status,
        }
        with _claiming():
            row = self._named("allocate_remembering", params).first()
        if row is None:
            return None
        ids = allocation_of(row.answer)
        return IdManager(ids.prefix, scope, last_value=ids.last, format=ids.format)

    def probe(self, prefix: str, fmt: IdFormat) -> int:
        # A savepoint keeps the caller's pending work untouched; rolling it back leaves no row.
        # Each probe uses a scope of its own, so concurrent health checks never wait for or
        # deadlock with each other.
        scope = f"{_PROBE_SCOPE}{uuid.uuid4().hex}"
        with translate_errors():
            savepoint = self.session.begin_nested()
        try:
            manager = self.insert(IdManager(prefix, scope, last_value=1, format=fmt))
        except BaseException:
            # The failure may have ended the transaction and its savepoint (MySQL rolls the
            # whole transaction back on a deadlock): report it, not the failed rollback.
            with suppress(SQLAlchemyError):
                savepoint.rollback()
            raise
        with translate_errors():
            savepoint.rollback()
        if manager is None:
            raise StorageError(f"The health check could not create its sequence {prefix}")
        return manager.last_value


@contextmanager
def _claiming() -> Iterator[None]:
    """Turn the unique key of a stored answer into :class:`KeyAlreadyUsed`."""
    try:
        yield
    except StorageError as exc:
        if exc.__cause__ is not None and classify(exc.__cause__) is Failure.DUPLICATE:
            raise KeyAlreadyUsed from exc
        raise


def _inserted(result: Any) -> bool:
    """Return whether an INSERT … ON DUPLICATE KEY UPDATE inserted its row.

    With the FOUND_ROWS flag SQLAlchemy sets, one affected row is an insert or an update
    that changed nothing; only an insert reports the new AUTO_INCREMENT id.
    """
    return bool(result.rowcount == 1 and result.lastrowid)


def _naive_utc(moment: datetime, dialect: str) -> datetime:
    # SQLite and MySQL store naive UTC times: compare like with like.
    if dialect == "postgresql":
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _stored_audit(row: Row[Any]) -> StoredAudit:
    m = row._mapping
    separator = m["separator"]
    fmt = (
        IdFormat(separator, m["letter_width"], m["digit_width"])
        if separator is not None
        else IdFormat()
    )
    entry = AuditEntry(
        m["scope"],
        m["prefix"],
        AuditAction(m["action"]),
        m["old_value"],
        m["new_value"],
        m["actor"],
        m["detail"],
    )
    created = _utc(m["created_at"])
    assert created is not None, "created_at is NOT NULL"
    return StoredAudit(m["id"], created, entry, fmt)
