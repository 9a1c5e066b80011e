"""IDs assigned by the ORM: a model declares its prefix, the session numbers new objects.

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[str] = mapped_column(String(300), primary_key=True, info=numbered("CUS"))

    class Invoice(Base):
        __tablename__ = "invoices"
        id: Mapped[int] = mapped_column(primary_key=True)
        issued_on: Mapped[date]
        number: Mapped[str | None] = mapped_column(
            String(300), info=numbered("INV{YYYY}", at_commit=True, date_from="issued_on")
        )

    Session = sessionmaker(engine)   # or async_sessionmaker(async_engine)
    install(Session)

New objects whose numbered column is None get their number when the session flushes (one
allocation per ``(scope, prefix)`` per flush, however many objects), or with ``at_commit=True``
in the session's last step before commit (on PostgreSQL, a sequence numbering one row there
allocates and writes it in one statement). Either way the allocation joins the session's
transaction: committed numbers have no gaps, and the numbers of objects whose transaction rolls
back are taken back from them and handed out again. A transaction that took numbers and then
loses a conflict, at any statement or in ``commit()`` (Galera certifies there), raises
``TransactionConflictError``: roll it back and run it again.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar, cast

from sqlalchemy import Connection, Executable, Table, Update, bindparam, event, inspect, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapper, Session, SessionTransaction, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from .application.options import DEFAULT_OPTIONS, ServiceOptions
from .application.service import SyncIdManagerService, sequence_key
from .domain.errors import InvalidInputError
from .domain.format import MAX_ORDINAL, IdFormat, format_id
from .domain.period import is_template, resolve_prefix
from .infrastructure.direct import execute_on_cursor, fetch_on_cursor, on_cursor
from .infrastructure.errors import translate_errors, watch_commit
from .infrastructure.models import IdManagerModel
from .infrastructure.repository import IdManagerRepositoryImpl
from .infrastructure.statements import Statement, allocate_and_write

__all__ = ["Numbering", "install", "numbered"]

INFO_KEY = "idmanager"
_SESSION_KEY = "idmanager.orm"

# An attribute name of the object, or a function of the object.
Source: TypeAlias = str | Callable[[Any], Any] | None
Key: TypeAlias = tuple[str, str]  # (scope, resolved prefix)
T = TypeVar("T")


def _read(obj: object, source: Source) -> Any:
    if source is None:
        return None
    return source(obj) if callable(source) else getattr(obj, source)


@dataclass(frozen=True, slots=True)
class Numbering:
    """How a column is numbered: see :func:`numbered`."""

    prefix: str
    at_commit: bool = False
    scope_from: Source = None
    date_from: Source = None

    def key(self, obj: object, fiscal_year_start: int) -> Key:
        """Return the sequence that numbers ``obj``: its scope and its resolved prefix,
        validated.

        Raises:
            InvalidPrefixError, InvalidScopeError: naming what is wrong.
        """
        prefix = self.prefix
        if is_template(prefix):
            on = _read(obj, self.date_from)
            prefix = resolve_prefix(prefix, on, fiscal_year_start=fiscal_year_start)
        scope = _read(obj, self.scope_from)
        # A tenant id may be a number. A plain prefix's key is checked once (cached).
        return sequence_key(prefix, "" if scope is None else str(scope), None)


def numbered(
    prefix: str, *, at_commit: bool = False, scope_from: Source = None, date_from: Source = None
) -> dict[str, Numbering]:
    """Return the ``info=`` of a column that new objects get their ID in.

    Args:
        prefix: the prefix, or a period template such as ``INV{YYYY}``.
        at_commit: assign the number just before commit instead of at flush, so that the
            sequence's row is locked only while committing. Not for primary keys.
        scope_from: the scope (tenant): an attribute name or a function of the object
            (None: the default scope ``""``; other values are turned into strings).
        date_from: the document's date that resolves a period template: an attribute name or
            a function of the object (None: today, UTC).

    Raises:
        InvalidPrefixError: the prefix or template is invalid.
    """
    resolve_prefix(prefix)  # refuse a bad prefix where the model is declared
    return {INFO_KEY: Numbering(prefix, at_commit, scope_from, date_from)}


@dataclass(frozen=True, slots=True, eq=False)
class _Numbered:
    """A numbered attribute of a mapped class."""

    key: str
    numbering: Numbering
    # At commit: UPDATE its table SET its column = :_idm_value WHERE the table's primary key
    # is (:_idm_pk0, ...), taken from these positions of the object's identity.
    update: Update | None = None
    pk_positions: tuple[int, ...] = ()
    # The update compiled for each dialect it ran on (the DB-API cursor's text).
    compiled: dict[Dialect, Statement] = field(default_factory=dict)
    # PostgreSQL: the allocation of one row's ID and its write, in one statement; and its
    # text for each dialect (driver) it ran on.
    folded: Executable | None = None
    folded_compiled: dict[Dialect, Statement] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters of :attr:`update`: the number, then the primary key."""
        return ("_idm_value", *self.pk_names)

    @property
    def pk_names(self) -> tuple[str, ...]:
        return tuple(f"_idm_pk{i}" for i in range(len(self.pk_positions)))

    @property
    def folded_names(self) -> tuple[str, ...]:
        """The parameters of :attr:`folded`: the allocation's, then the primary key."""
        return ("count", "key_scope", "key_prefix", "room", *self.pk_names)

    def row(self, identity: tuple[Any, ...]) -> list[Any]:
        """Return the values of :attr:`update`'s parameters for one object, its number None."""
        return [None, *(identity[p] for p in self.pk_positions)]

    def statement(self, dialect: Dialect) -> Statement:
        """Return :attr:`update` compiled for ``dialect``."""
        found = self.compiled.get(dialect)
        if found is None:
            assert self.update is not None, "only columns numbered at commit are updated"
            found = self.compiled[dialect] = Statement(dialect, self.update, self.names)
        return found

    def folded_statement(self, dialect: Dialect) -> Statement:
        """Return :attr:`folded` compiled for ``dialect``."""
        found = self.folded_compiled.get(dialect)
        if found is None:
            assert self.folded is not None, "only columns numbered at commit are folded"
            found = Statement(dialect, self.folded, self.folded_names)
            self.folded_compiled[dialect] = found
        return found


def _discover(mapper: Mapper[Any]) -> Iterator[_Numbered]:
    identity_keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    for prop in mapper.column_attrs:
        column = prop.columns[0]
        numbering = column.info.get(INFO_KEY)
        if not isinstance(numbering, Numbering):
            continue
        if not numbering.at_commit:
            yield _Numbered(prop.key, numbering)
            continue
        if prop.key in identity_keys:
            raise InvalidInputError(
                f"{mapper.class_.__name__}.{prop.key} is a primary key: the row is "
                "inserted with it, so it cannot be numbered at commit"
            )
        # Core, not ORM bulk UPDATE: this runs while the sequence is locked, and costs a
        # tenth of the CPU time.
        table = cast(Table, column.table)
        pk = list(table.primary_key)
        statement = (
            update(table)
            .where(*(c == bindparam(f"_idm_pk{i}") for i, c in enumerate(pk)))
            .values({column: bindparam("_idm_value")})
        )
        positions = tuple(identity_keys.index(mapper.get_property_by_column(c).key) for c in pk)
        folded = allocate_and_write(column, pk)
        yield _Numbered(prop.key, numbering, statement, positions, folded=folded)


_COLUMNS: weakref.WeakKeyDictionary[Mapper[Any], tuple[_Numbered, ...]] = (
    weakref.WeakKeyDictionary()
)


def _numbered_columns(mapper: Mapper[Any]) -> tuple[_Numbered, ...]:
    """Return the numbered attributes of a mapped class (cached)."""
    found = _COLUMNS.get(mapper)
    if found is None:
        found = _COLUMNS[mapper] = tuple(_discover(mapper))
    return found


@dataclass(slots=True)
class _Tracked:
    """What the numberer did in the session's current transaction (held in ``session.info``)."""

    # Values we assigned: taken back if the row they went to is rolled back.
    assigned: list[tuple[object, str]] = field(default_factory=list)
    # Flushed objects still waiting for their at-commit number. Held strongly: the session
    # keeps only weak references to clean objects, and the number must not be lost.
    at_commit: list[tuple[object, _Numbered]] = field(default_factory=list)
    # At-commit numbers written to the database, set on the objects once the commit is done.
    written: list[tuple[object, str, str]] = field(default_factory=list)
    # Numbering at commit failed, perhaps after drawing numbers: committing now would lose
    # them (a gap), so the transaction must be rolled back.
    failed: bool = False


def _tracked(session: Session) -> _Tracked:
    tracked = session.info.get(_SESSION_KEY)
    if tracked is None:
        tracked = session.info[_SESSION_KEY] = _Tracked()
    return tracked


class _Numberer:
    """The session event handlers, with the service's options."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options

    def _key(self, obj: object, numbered: _Numbered) -> Key:
        return numbered.numbering.key(obj, self.options.fiscal_year_start)

    def _service(self, session: Session) -> SyncIdManagerService:
        return SyncIdManagerService(IdManagerRepositoryImpl(session), self.options)

    def _allocate(
        self,
        session: Session,
        groups: dict[Key, list[T]],
        alone: Callable[[Key, T], str | None] | None = None,
    ) -> Iterator[tuple[T, str]]:
        """Yield each item of each group with its ID, one allocation statement per group; a
        group of one item is first offered to ``alone``, which may number it itself."""
        service = None
        # Always in the same order, so two sessions never lock two sequences crosswise.
        for key, items in sorted(groups.items()):
            if alone is not None and len(items) == 1:
                value = alone(key, items[0])
                if value is not None:
                    yield items[0], value
                    continue
            scope, prefix = key
            service = service or self._service(session)
            ids = service.generate_range(prefix, len(items), scope=scope)
            yield from zip(items, ids, strict=True)

    def before_flush(self, session: Session, _context: Any, _instances: Any) -> None:
        """Number the new objects (early), and remember those numbered at commit."""
        new = session.new
        if not new:
            return
        groups: dict[Key, list[tuple[object, _Numbered]]] = defaultdict(list)
        states: Iterator[Any] = map(inspect, new)
        if len(new) > 1:
            states = iter(sorted(states, key=lambda s: s.insert_order))
        for state in states:
            for numbered in _numbered_columns(state.mapper):
                if state.dict.get(numbered.key) is not None:
                    continue  # given by the caller: an import or a migration
                obj = state.obj()
                if numbered.update is not None:
                    _tracked(session).at_commit.append((obj, numbered))
                else:
                    groups[self._key(obj, numbered)].append((obj, numbered))
        if groups:
            assigned = _tracked(session).assigned
            for (obj, numbered), value in self._allocate(session, groups):
                setattr(obj, numbered.key, value)
                assigned.append((obj, numbered.key))

    def before_commit(self, session: Session) -> None:
        """Flush, then number the rows waiting for it and update them in bulk, last."""
        if session.in_nested_transaction():
            return  # releasing a savepoint: the transaction goes on
        # Insert everything first, so the sequence's lock is taken at the very end.
        session.flush()
        tracked = session.info.get(_SESSION_KEY)
        if tracked is None or not (tracked.at_commit or tracked.failed):
            return
        if tracked.failed:
            raise PendingRollbackError(
                "Numbering at commit failed in this transaction; roll it back, or the numbers "
                "it already drew would be lost"
            )
        try:
            self._number_at_commit(session, tracked)
        except BaseException:
            tracked.failed = True
            raise

    def _number_at_commit(self, session: Session, tracked: _Tracked) -> None:
        waiting, tracked.at_commit = tracked.at_commit, []
        # Prepare all that does not need the numbers before the sequences are locked.
        groups: dict[Key, list[tuple[object, _Numbered, list[Any]]]] = defaultdict(list)
        rows: dict[_Numbered, list[list[Any]]] = defaultdict(list)
        for obj, numbered in waiting:
            state = inspect(obj)
            if state.persistent and state.dict.get(numbered.key) is None:
                row = numbered.row(state.identity)
                rows[numbered].append(row)
                groups[self._key(obj, numbered)].append((obj, numbered, row))
        # Each update on its table's connection, found now: the ORM's per-statement work
        # (autoflush, binds, its compile state) would run while the sequences are locked.
        connections = {
            numbered: session.connection(bind_arguments={"clause": numbered.update})
            for numbered in rows
        }
        folding = _folding(session, connections)

        def alone(key: Key, item: tuple[object, _Numbered, list[Any]]) -> str | None:
            """On PostgreSQL, allocate one row's ID and write it in one statement."""
            _obj, numbered, row = item
            if numbered not in folding:
                return None
            value, stored = self._allocate_writing(
                session, connections[numbered], numbered, row, key
            )
            if stored:
                rows[numbered].remove(row)
            return value

        # From the first allocation to COMMIT the sequences are locked: in between, only the
        # numbers, and one write of them per column (on PostgreSQL a sequence numbering one
        # row writes it with its allocation).
        for (obj, numbered, row), value in self._allocate(session, groups, alone):
            row[0] = value
            tracked.written.append((obj, numbered.key, value))
        for numbered, values in rows.items():
            if not values:
                continue
            connection = connections[numbered]
            if on_cursor(connection):
                execute_on_cursor(connection, numbered.statement(connection.dialect), values)
            else:  # through SQLAlchemy, which logs it (echo) or shows it to listeners
                names = numbered.names
                params = [dict(zip(names, v, strict=True)) for v in values]
                connection.execute(cast(Update, numbered.update), params)

    def _allocate_writing(
        self,
        session: Session,
        connection: Connection,
        numbered: _Numbered,
        row: list[Any],
        key: Key,
    ) -> tuple[str, bool]:
        """Allocate ``row``'s ID and write it, in one statement; return the ID and whether
        it is written (if not, the write of the numbers writes it)."""
        scope, prefix = key  # validated
        values = (1, scope, prefix, MAX_ORDINAL - 1, *row[1:])
        watch_commit(connection)  # as the repository does for its own statements
        # The service's ``waiting()``, without making a service when there is no timeout.
        timeout = self.options.lock_timeout_ms
        with nullcontext() if timeout is None else self._service(session).waiting():
            if on_cursor(connection):
                found = fetch_on_cursor(
                    connection, numbered.folded_statement(connection.dialect), values
                )
            else:  # through SQLAlchemy, which logs it (echo) or shows it to listeners
                params = dict(zip(numbered.folded_names, values, strict=True))
                with translate_errors():
                    found = connection.execute(cast(Executable, numbered.folded), params).first()
        if found is None:
            # Nothing allocated, nothing written: the sequence is missing (the service creates
            # it, if the options let it), inactive or full (it says so).
            return self._service(session).generate_range(prefix, 1, scope=scope)[0], False
        last_value, separator, letter_width, digit_width, stored = found
        if stored is not None:
            return str(stored), True
        # Its letters grew past the format's width: PostgreSQL left it to Python to write.
        return format_id(prefix, last_value, IdFormat(separator, letter_width, digit_width)), False

    def after_commit(self, session: Session) -> None:
        """Show the at-commit numbers on the objects; the rest is permanent now."""
        if session.in_nested_transaction():
            return
        tracked = session.info.pop(_SESSION_KEY, None)
        if tracked is not None:
            for obj, key, value in tracked.written:
                set_committed_value(obj, key, value)

    def after_soft_rollback(self, session: Session, _previous: SessionTransaction) -> None:
        """Take the numbers back from objects whose INSERT a savepoint or flush undid."""
        tracked = session.info.get(_SESSION_KEY)
        if tracked is None:
            return
        tracked.assigned = _take_back(tracked.assigned, lambda obj: inspect(obj).transient)
        tracked.at_commit = [item for item in tracked.at_commit if not inspect(item[0]).transient]

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Take every number back if the session's transaction ended without committing."""
        if transaction.parent is None:
            tracked = session.info.pop(_SESSION_KEY, None)
            if tracked is not None:
                _take_back(tracked.assigned, lambda _obj: True)


def _take_back(
    assigned: list[tuple[object, str]], undone: Callable[[object], bool]
) -> list[tuple[object, str]]:
    """Set the numbers of undone objects back to None; return the others."""
    kept = []
    for obj, key in assigned:
        if undone(obj):
            set_committed_value(obj, key, None)
        else:
            kept.append((obj, key))
    return kept


def _folding(session: Session, connections: dict[_Numbered, Connection]) -> set[_Numbered]:
    """Return the numbered columns whose one row may be allocated and written in one
    statement: on PostgreSQL, where the sequences are on the same connection."""
    found = {n for n, c in connections.items() if c.dialect.name == "postgresql"}
    if not found:
        return found
    # The session's connection to an engine (or the connection it was bound to).
    sequences = session.get_bind(IdManagerModel)
    return {n for n in found if sequences in (connections[n], connections[n].engine)}


_EVENTS = (
    "before_flush",
    "before_commit",
    "after_commit",
    "after_soft_rollback",
    "after_transaction_end",
)
_INSTALLED: weakref.WeakKeyDictionary[Any, _Numberer] = weakref.WeakKeyDictionary()

SessionTarget: TypeAlias = (
    Session
    | AsyncSession
    | type[Session]
    | type[AsyncSession]
    | sessionmaker[Any]
    | async_sessionmaker[Any]
    | scoped_session[Any]
)


def _event_target(target: SessionTarget) -> Session | type[Session]:
    """Return the sync session (class) that the events of ``target`` go to."""
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target.class_  # sessionmaker made this subclass for itself
    if isinstance(target, AsyncSession):
        return target.sync_session
    if isinstance(target, async_sessionmaker):
        # Give the factory a Session subclass of its own, as sessionmaker does, so that
        # the events number its sessions and no others.
        base = target.kw.get("sync_session_class") or target.class_.sync_session_class
        if base not in _INSTALLED:
            base = type(base.__name__, (base,), {})
            target.configure(sync_session_class=base)
        return cast(type[Session], base)
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return target.sync_session_class
    if isinstance(target, Session) or (isinstance(target, type) and issubclass(target, Session)):
        return target
    raise TypeError(
        f"Expected a SQLAlchemy session, session class or session factory, "
        f"got {type(target).__name__}"
    )


def install(target: SessionTarget, options: ServiceOptions = DEFAULT_OPTIONS) -> None:
    """Number the new objects of numbered models in the sessions of ``target``.

    ``target`` is a ``sessionmaker`` or ``async_sessionmaker`` (its sessions only), a session
    or ``AsyncSession`` (that one only), or a session class (every session of that class:
    ``install(Session)`` numbers them all; an ``AsyncSession`` class stands for its
    ``sync_session_class``). Installing again replaces the options.

    Args:
        target: where to listen.
        options: the service's options (``fiscal_year_start``, ``create_missing``,
            ``default_format``, ``max_count``, ``actor``, ``lock_timeout_ms``).
    """
    listened = _event_target(target)
    numberer = _INSTALLED.get(listened)
    if numberer is None:
        numberer = _INSTALLED[listened] = _Numberer(options)
        for name in _EVENTS:
            event.listen(listened, name, getattr(numberer, name))
    numberer.options = options
