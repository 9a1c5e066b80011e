"""The tables' statements on the allocation path, built once per dialect.

Building a statement costs more than the database round trip it makes, so the allocation path
only binds values to statements built here; :class:`Statement` compiles one to the driver's own
text for the paths that run it on the driver's connection (:mod:`.direct`).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Executable,
    FromClause,
    Integer,
    Select,
    String,
    Table,
    Text,
    bindparam,
    case,
    func,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from ..domain.entity import IdManager
from .models import IdempotencyModel, IdManagerModel

SEQUENCES = cast(Table, IdManagerModel.__table__)
IDEMPOTENCY = cast(Table, IdempotencyModel.__table__)
COLUMNS = tuple(SEQUENCES.c)
MYSQL = ("mysql", "mariadb")


def row_of(manager: IdManager) -> dict[str, Any]:
    """Return the columns of a sequence's row (its id and timestamps aside)."""
    return {
        "scope": manager.scope,
        "prefix": manager.prefix,
        "last_value": manager.last_value,
        "is_active": manager.is_active,
        "separator": manager.format.separator,
        "letter_width": manager.format.letter_width,
        "digit_width": manager.format.digit_width,
        "created_by": manager.created_by,
        "template": manager.template,
    }


def _build(dialect: str) -> dict[str, Executable]:
    """Build the statements of the allocation path for ``dialect``, with bound parameters."""
    t = SEQUENCES.c
    key = (t.scope == bindparam("key_scope"), t.prefix == bindparam("key_prefix"))
    # PostgreSQL would fail on a BIGINT overflow, but SQLite silently turns the sum into a
    # REAL and stores it: guard in the statement, on both.
    has_room = t.last_value <= bindparam("room")
    allocate = (
        update(SEQUENCES)
        .where(*key, t.is_active, has_room)
        .values(last_value=t.last_value + bindparam("count"), updated_at=func.current_timestamp())
    )
    statements: dict[str, Executable] = {"get": select(*COLUMNS).where(*key)}
    if dialect in MYSQL:
        # No RETURNING on UPDATE: LAST_INSERT_ID(expr) hands the new last_value back in the
        # statement's own reply (the driver's lastrowid), so the allocation is one statement.
        statements["allocate"] = allocate.values(
            last_value=func.last_insert_id(t.last_value + bindparam("count"))
        )
        statements["get_for_update"] = select(*COLUMNS).where(*key).with_for_update()
        return statements
    statements["allocate"] = allocate.returning(*COLUMNS)
    # Run on the driver connection (.direct): only what the answer needs. The timestamps
    # would cost more to decode (on SQLite, to parse from text) than the rest of the row.
    statements["allocate_direct"] = allocate.returning(
        t.last_value, t.separator, t.letter_width, t.digit_width
    )
    if dialect == "postgresql":
        statements["allocate_remembering"] = _allocate_remembering(allocate)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statements["insert"] = (
        insert(SEQUENCES)
        .values({name: bindparam(name) for name in row_of(IdManager("X"))})
        .on_conflict_do_nothing(index_elements=[t.scope, t.prefix])
        .returning(*COLUMNS)
    )
    # SQLite locks the whole database for a write transaction: no row locks to take.
    statements["get_for_update"] = (
        statements["get"] if dialect == "sqlite" else select(*COLUMNS).where(*key).with_for_update()
    )
    return statements


def _allocate_remembering(allocate: Any) -> Executable:
    """Allocate and store the answer in ONE statement (PostgreSQL's data-modifying CTE).

    Both happen, or neither: a key already used fails the whole statement, the allocation
    with it.
    """
    t = SEQUENCES.c
    done = allocate.returning(t.prefix, t.last_value, t.separator, t.letter_width, t.digit_width)
    done = done.cte("allocated")
    answer = func.json_build_object(
        "prefix",
        done.c.prefix,
        "last",
        done.c.last_value,
        "count",
        bindparam("count", type_=BigInteger),
        "format",
        func.json_build_array(done.c.separator, done.c.letter_width, done.c.digit_width),
    )
    row: Any = select(
        # Typed: asyncpg cannot tell the type of a bare parameter in a SELECT list.
        bindparam("owner", type_=String),
        bindparam("idem_key", type_=String),
        bindparam("fingerprint", type_=String),
        bindparam("status", type_=Integer),
        sa_cast(answer, Text),
    ).select_from(done)
    columns = ["owner", "idem_key", "fingerprint", "status", "answer"]
    return IDEMPOTENCY.insert().from_select(columns, row).returning(IDEMPOTENCY.c.answer)


def _number(value: int) -> ColumnElement[int]:
    return literal_column(str(value), BigInteger)


def formatted_ids(source: FromClause, prefix: ColumnElement[str]) -> Select[Any]:
    """Select, for each row of ``source`` (its columns ``last_value``, ``separator``,
    ``letter_width``, ``digit_width``), the ID of ``prefix`` at ordinal ``last_value`` as
    PostgreSQL writes it: what :func:`~..domain.format.format_id` writes, or NULL once the
    letters have grown past ``letter_width`` (``ZZZ9999`` is followed by ``AAAA0001``: the
    caller formats those). Its one column is ``id``.

    The letters are the letter block in base 26, written with eight letters (a block below
    ``26**letter_width`` has ``A`` for the rest) and cut to ``letter_width``.
    """
    s, one, text = source.c, _number(1), Text()
    # Integers, whatever ``source`` says: ``//`` on integers is PostgreSQL's integer division.
    n = sa_cast(s.last_value, BigInteger)
    per_block = sa_cast(func.repeat(literal_column("'9'"), s.digit_width), BigInteger)
    parts = select(
        n.label("n"),
        s.separator.label("sep"),
        sa_cast(s.letter_width, Integer).label("lw"),
        sa_cast(s.digit_width, Integer).label("dw"),
        per_block.label("per"),
        ((n - one) // per_block).label("block"),
    ).subquery("idm_parts")
    p, zero = parts.c, literal_column("'0'", String)
    letters = func.concat(
        *(
            func.chr(sa_cast(_number(65) + p.block // _number(26**i) % _number(26), Integer))
            for i in range(7, -1, -1)
        )
    )
    digits = func.lpad(sa_cast((p.n - one) % p.per + one, text), p.dw, zero)
    only_digits = case(
        (p.n <= p.per, func.lpad(sa_cast(p.n, text), p.dw, zero)),
        else_=sa_cast(p.n, text),  # past its width the number grows, as in Python
    )
    the_id = case(
        (p.lw == literal_column("0"), func.concat(prefix, p.sep, only_digits)),
        (
            p.block < sa_cast(func.power(literal_column("26"), p.lw), BigInteger),
            func.concat(prefix, p.sep, func.right(letters, p.lw), digits),
        ),
        else_=null(),
    )
    return select(the_id.label("id")).select_from(parts)


def allocate_and_write(column: ColumnElement[Any], keys: list[Column[Any]]) -> Executable:
    """Allocate one ID of a sequence and write it into ``column`` of one row, in ONE statement
    (PostgreSQL's data-modifying CTEs): the ORM's numbering at commit.

    Parameters: the allocation's (``count``, ``key_scope``, ``key_prefix``, ``room``), then
    the row's key, ``_idm_pk0`` … for ``keys``. Its one row is the sequence's new state
    (``last_value``, the format's three columns) and the ID written, NULL when PostgreSQL did
    not write it (see :func:`formatted_ids`: the caller writes it). No row: no ID was
    allocated (the sequence is missing, inactive or full), and nothing was written.
    """
    allocating: Any = named_statement("postgresql", "allocate_direct")
    allocated = allocating.cte("idm_allocated")
    a = allocated.c
    the_id = formatted_ids(allocated, bindparam("key_prefix", type_=String)).cte("idm_id")
    value = select(the_id.c.id).scalar_subquery()  # NULL: none allocated, or not written
    written = (
        update(cast(Table, column.table))
        .where(*(c == bindparam(f"_idm_pk{i}") for i, c in enumerate(keys)))
        .where(value.is_not(None))
        .values({column: value})
        .returning(column)
        .cte("idm_written")
    )
    stored = select(*written.c).scalar_subquery()
    return select(a.last_value, a.separator, a.letter_width, a.digit_width, stored)


_STATEMENTS: dict[str, dict[str, Executable]] = {}


def named_statement(dialect: str, name: str) -> Executable:
    """Return one of the statements built by :func:`_build` for ``dialect``."""
    if dialect not in _STATEMENTS:
        _STATEMENTS[dialect] = _build(dialect)
    return _STATEMENTS[dialect][name]


class Statement:
    """A statement as the driver's text, and its parameters in the driver's form.

    Compiled once, with the dialect of the engine it runs on: a call only binds values, each
    converted as SQLAlchemy would for its column's type on that dialect (a ``Uuid`` or a
    ``DateTime`` is text to SQLite).
    """

    def __init__(self, dialect: Dialect, statement: Executable, names: tuple[str, ...]) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
        self.sql = str(compiled)
        defaults = compiled.construct_params(dict.fromkeys(names)) or {}
        order = compiled.positiontup
        self.names = names
        self.processors = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        )
        self.processing = any(p is not None for p in self.processors)
        # The statement's own parameters, in the order its text wants them: the allocation's
        # are exactly ``names`` (bound as they are given); the keyed one has constants too.
        self.exact = (tuple(order) if order is not None else tuple(defaults)) == names
        if order is None:  # named (psycopg's %(name)s): a mapping
            self.named = True
            self.template: Any = dict(defaults)
            self.slots: tuple[Any, ...] = names
        else:  # positional ($1 or ?): a list; a name may stand at several places
            self.named = False
            self.template = [defaults[n] for n in order]
            self.slots = tuple(tuple(i for i, n in enumerate(order) if n == m) for m in names)

    def bind(self, *values: Any) -> Any:
        """Return the statement's parameters, ``values`` given in the order of its ``names``."""
        if self.processing:
            values = tuple(
                v if p is None else p(v) for p, v in zip(self.processors, values, strict=True)
            )
        if self.exact:
            return dict(zip(self.names, values, strict=True)) if self.named else values
        params = self.template.copy()
        for slot, value in zip(self.slots, values, strict=True):
            if self.named:
                params[slot] = value
            else:
                for i in slot:
                    params[i] = value
        return params
