"""The only place the benchmarks touch IdManager's internal names.

The package is being refactored: constructors and module paths inside it may move. Everything
else in bench/ uses the public entry points (``IdGeneratorUtil``, ``create_engine``,
``create_async_engine``, ``migrate``, ``idmanager.api.app.create_app``), so when an internal
name moves, this file is the one to update.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

# What the library's own-transaction allocation returns: the new last_value and the format.
NARROW = " RETURNING last_value, separator, letter_width, digit_width"
# The baseline: the smallest upsert, creating the row if missing, returning the value.
MINIMAL = (
    "INSERT INTO id_managers (scope, prefix, last_value) VALUES ('', $1, 1) "
    "ON CONFLICT (scope, prefix) DO UPDATE SET last_value = id_managers.last_value + 1 "
    "RETURNING last_value"
)
MAX_ORDINAL = 2**63 - 1  # last_value is a signed BIGINT

_NOTED: set[str] = set()


def _note(why: str) -> None:
    if why not in _NOTED:
        _NOTED.add(why)
        print(f"  (bench/internals.py: {why})")


def _dialect(driver: str) -> Any:
    return {
        "asyncpg": pg_asyncpg.dialect(),
        "psycopg": pg_psycopg.dialect(),
        "sqlite": sqlite.dialect(),
    }[driver]


def _named_statement() -> Any:
    """Return the library's function that gives its statements by name."""
    try:
        from idmanager.infrastructure.statements import named_statement
    except ImportError:  # an older library built them in the repository
        from idmanager.infrastructure.repository import (
            _statement as named_statement,
        )
    return named_statement


def library_statement(driver: str) -> tuple[str, tuple[str, ...]]:
    """Return the statement the library's own-transaction allocation runs, for ``driver``.

    ``driver`` is ``asyncpg`` ($1 placeholders), ``psycopg`` (%(name)s) or ``sqlite`` (?).
    Compiled from the repository's own statement (``UPDATE … RETURNING`` the four columns
    the answer needs), with its parameters' order: the raw baseline runs exactly what the
    library runs. Before that statement existed (an older library), its full allocation
    statement with the same narrow RETURNING stands in.
    """
    named = _named_statement()
    dialect = "sqlite" if driver == "sqlite" else "postgresql"
    try:
        statement = named(dialect, "allocate_direct")
    except KeyError:
        _note("no 'allocate_direct' (an older library): its 'allocate', narrowed")
        statement = named(dialect, "allocate")
    compiled = statement.compile(dialect=_dialect(driver))
    sql = str(compiled).split(" RETURNING ")[0] + NARROW
    order = tuple(compiled.positiontup or ("count", "key_scope", "key_prefix", "room"))
    return sql, order


def keyed_statement() -> tuple[str, Callable[[str, str], list[Any]]] | None:
    """Return the statement the library runs for a first request with an Idempotency-Key on
    asyncpg (the allocation and its stored answer, one statement), and a builder of its
    parameters from a prefix and a key; None for a library without it."""
    try:
        statement = _named_statement()("postgresql", "allocate_remembering")
    except KeyError:
        return None
    compiled = statement.compile(dialect=_dialect("asyncpg"))
    values = {
        **compiled.params,
        **statement_values(""),
        "owner": "bench",
        "fingerprint": "f" * 64,
        "status": 201,
    }
    order = tuple(compiled.positiontup or ())

    def args(prefix: str, key: str) -> list[Any]:
        given = {**values, "key_prefix": prefix, "idem_key": key}
        return [given[name] for name in order]

    return str(compiled), args


def statement_values(prefix: str, count: int = 1) -> dict[str, Any]:
    """Return the library statement's parameters for one allocation of ``prefix``."""
    return {"count": count, "key_scope": "", "key_prefix": prefix, "room": MAX_ORDINAL - count}


def positional(order: tuple[str, ...]) -> Callable[[str], list[Any]]:
    """Return a builder of the statement's positional parameters for one ID of a prefix."""
    template = [statement_values("")[name] for name in order]
    at = order.index("key_prefix")

    def args(prefix: str) -> list[Any]:
        values = template.copy()
        values[at] = prefix
        return values

    return args


def create_sequences(url: str, names: list[str]) -> None:
    """Create the sequences ``names`` (one ID each): the raw statement only updates."""
    from idmanager import connect, create_engine

    engine = create_engine(url)
    try:
        use_cases = connect(engine)
        for name in names:
            use_cases.allocate(name)
    finally:
        engine.dispose()


def use_cases(engine: Any) -> Any:
    """Return the library's own-transaction entry point on ``engine`` (async or sync).

    ``idmanager.connect(engine)`` since the refactor; the use cases' own constructors before.
    """
    try:
        from idmanager import connect
    except ImportError:
        connect = None
    if connect is not None:
        return connect(engine)
    from sqlalchemy.ext.asyncio import AsyncEngine

    from idmanager import IdManagerUseCases, SyncIdManagerUseCases

    if isinstance(engine, AsyncEngine):
        return IdManagerUseCases(engine)
    return SyncIdManagerUseCases(engine)


def library_core_statement(dialect: str) -> Any:
    """Return the repository's Core allocation statement (the full one, every column)."""
    return _named_statement()(dialect, "allocate")


def route_parameters() -> dict[str, Any]:
    """Return the API's dependency aliases the HTTP ladder prices (the key check)."""
    from idmanager.api.deps import GenerateAccess

    return {"GenerateAccess": GenerateAccess}


async def tasks_rate(tasks: int, seconds: float, one: Callable[[], Awaitable[object]]) -> float:
    """Return calls per second of ``tasks`` asyncio tasks calling ``one()`` for ``seconds``."""
    done = 0
    stop = time.perf_counter() + seconds

    async def task() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one()
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(tasks)))
    return done / (time.perf_counter() - began)


async def timed_rate(
    tasks: int, seconds: float, one: Callable[[], Awaitable[object]]
) -> tuple[float, float]:
    """As :func:`tasks_rate`; return calls per second and µs of this process's CPU each."""
    began, cpu = time.perf_counter(), time.process_time()
    rate = await tasks_rate(tasks, seconds, one)
    spent, elapsed = time.process_time() - cpu, time.perf_counter() - began
    return rate, spent / max(rate * elapsed, 1.0) * 1e6


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (advisory unlock, CLOSE ALL, UNLISTEN, RESET
    ALL): a raw baseline is one round trip per ID."""


@asynccontextmanager
async def raw_pool(url: str, size: int) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool of ``size`` connections without the reset query, closed afterwards."""
    # Opened per measurement, like the engines: the PostgreSQL server's connections are few.
    pool = await asyncpg.create_pool(url, min_size=size, max_size=size, reset=_no_reset)
    try:
        yield pool
    finally:
        await pool.close()
