"""Where the CPU above the raw statement goes, without a profiler: one layer added per step.

Each ladder starts from the raw driver running the library's statement and adds one piece of
what the library's own-transaction path does, measured like bench/cpu.py (CPU of this
process per allocation, steps in turns, median of rounds). The difference between two steps
is what that piece costs, free of the distortion a profiler adds to Python-heavy code.

SQLite's ladder also tests the hypotheses for its 0.07x: the pool, SQLAlchemy's reset of the
isolation level after an AUTOCOMMIT checkout (a ``PRAGMA read_uncommitted`` that makes SQLite
throw away its prepared statements), BEGIN IMMEDIATE and COMMIT, Core execution, the row's
timestamps parsed from text, and aiosqlite's worker thread.

``python bench/ladder.py [asyncpg|psycopg|sqlite ...]``.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
from cpu import BackendClock, Cost, clock_for, fresh_databases, measure_group
from cpu_paths import (
    ROUTE,
    Env,
    Op,
    Path,
    _positional,
    _values,
    async_engine,
    raw_asyncpg,
    raw_psycopg,
    raw_sqlite,
    route,
    sqlite_async_engine,
    sqlite_engine,
    sync_engine,
    util_aiosqlite,
    util_async_engine,
    util_sqlite,
    util_sync_engine,
)
from internals import PARAMETERS, library_core_statement, library_upsert, use_cases
from lean import LeanAsyncAllocator, LeanSyncAllocator, lean_statement
from sqlalchemy import Engine, event, text

from idmanager import create_engine

Step = Callable[[Env], Any]
SECONDS_PER_STEP = float(os.environ.get("IDMANAGER_BENCH_LADDER_SECONDS", "0.4"))
NOTE = (
    "Each ladder starts from the raw driver running the library's own statement and adds one "
    "piece of the library's own-transaction path per step (↳: a variant of the step above, "
    "not a step of the ladder). CPU of the benchmark process per allocation, 1 client, hot "
    "prefix, median of rounds in turns; the increment is what the step's piece costs."
)


def _core(dialect: str) -> Any:
    """The repository's Core upsert; if it has moved, the same SQL as text() (also compiled
    and cached by SQLAlchemy, so the step still measures Core execution)."""
    statement = library_core_statement(dialect)
    if statement is not None:
        return statement
    sql, _ = library_upsert("psycopg" if dialect == "postgresql" else "sqlite")
    if dialect == "postgresql":
        sql = re.sub(r"%\((\w+)\)s(::\w+)?", r":\1", sql)
    else:
        names = iter(PARAMETERS)
        sql = re.sub(r"\?", lambda _m: f":{next(names)}", sql)
    return text(sql)


# asyncpg: from the driver to IdGeneratorUtil.


def _asyncpg_on_pool(narrow: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        sql, order = lean_statement("asyncpg", narrow=narrow)
        args = _positional(order)
        async with async_engine(env) as engine:

            async def one(p: str) -> object:
                fairy = await engine.raw_connection()
                try:
                    return await fairy.driver_connection.fetchrow(sql, *args(p))
                finally:
                    fairy.close()

            yield Op(one)

    return setup


@asynccontextmanager
async def asyncpg_exec_driver_sql(env: Env) -> AsyncIterator[Op]:
    sql, order = library_upsert("asyncpg")
    args = _positional(order)
    async with async_engine(env) as engine:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

        async def one(p: str) -> object:
            async with autocommit.connect() as conn:
                return (await conn.exec_driver_sql(sql, tuple(args(p)))).first()

        yield Op(one)


def _asyncpg_core(in_run_sync: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        statement = _core("postgresql")
        async with async_engine(env) as engine:
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

            async def one(p: str) -> object:
                async with autocommit.connect() as conn:
                    if in_run_sync:
                        return await conn.run_sync(
                            lambda sync: sync.execute(statement, _values(p)).first()
                        )
                    return (await conn.execute(statement, _values(p))).first()

            yield Op(one)

    return setup


@asynccontextmanager
async def asyncpg_use_cases(env: Env) -> AsyncIterator[Op]:
    async with async_engine(env) as engine:
        yield Op(use_cases(engine).allocate)


@asynccontextmanager
async def asyncpg_lean(env: Env) -> AsyncIterator[Op]:
    async with async_engine(env) as engine:
        yield Op(LeanAsyncAllocator(engine).allocate)


ASYNCPG: tuple[tuple[str, Step], ...] = (
    ("raw asyncpg, prepared statement, one connection", raw_asyncpg),
    ("+ SQLAlchemy pool: engine.raw_connection() + close()", _asyncpg_on_pool(False)),
    ("  same, narrow RETURNING (4 columns, no timestamps)", _asyncpg_on_pool(True)),
    ("  lean prototype: + validation, IdRange, errors", asyncpg_lean),
    ("+ AsyncConnection (AUTOCOMMIT) + exec_driver_sql", asyncpg_exec_driver_sql),
    ("+ Core statement: execute() (compiled cache)", _asyncpg_core(False)),
    ("  Core statement inside run_sync (one greenlet)", _asyncpg_core(True)),
    ("+ repository, service, entity: use cases allocate()", asyncpg_use_cases),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_async_engine),
)


# psycopg.


@asynccontextmanager
async def psycopg_on_pool(env: Env) -> AsyncIterator[Op]:
    sql, _ = library_upsert("psycopg")
    async with sync_engine(env) as engine:

        def one(p: str) -> object:
            fairy = engine.raw_connection()
            try:
                conn = fairy.driver_connection
                conn.autocommit = True
                try:
                    return conn.execute(sql, _values(p)).fetchone()
                finally:
                    conn.autocommit = False
            finally:
                fairy.close()

        yield Op(one, False)


@asynccontextmanager
async def psycopg_exec_driver_sql(env: Env) -> AsyncIterator[Op]:
    sql, _ = library_upsert("psycopg")
    async with sync_engine(env) as engine:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

        def one(p: str) -> object:
            with autocommit.connect() as conn:
                return conn.exec_driver_sql(sql, _values(p)).first()

        yield Op(one, False)


@asynccontextmanager
async def psycopg_core(env: Env) -> AsyncIterator[Op]:
    statement = _core("postgresql")
    async with sync_engine(env) as engine:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

        def one(p: str) -> object:
            with autocommit.connect() as conn:
                return conn.execute(statement, _values(p)).first()

        yield Op(one, False)


@asynccontextmanager
async def psycopg_use_cases(env: Env) -> AsyncIterator[Op]:
    async with sync_engine(env) as engine:
        yield Op(use_cases(engine).allocate, False)


@asynccontextmanager
async def psycopg_lean(env: Env) -> AsyncIterator[Op]:
    async with sync_engine(env) as engine:
        yield Op(LeanSyncAllocator(engine).allocate, False)


PSYCOPG: tuple[tuple[str, Step], ...] = (
    ("raw psycopg, prepared, one autocommit connection", raw_psycopg),
    ("+ SQLAlchemy pool: raw_connection(), autocommit on/off", psycopg_on_pool),
    ("  lean prototype: + validation, IdRange, errors", psycopg_lean),
    ("+ Connection (AUTOCOMMIT) + exec_driver_sql", psycopg_exec_driver_sql),
    ("+ Core statement: execute() (compiled cache)", psycopg_core),
    ("+ repository, service, entity: use cases allocate()", psycopg_use_cases),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_sync_engine),
)


# SQLite: the hypotheses.


def _sqlite_on_pool(with_reset_pragma: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        sql, order = library_upsert("sqlite")
        args = _positional(order)
        async with sqlite_engine(env) as engine:

            def one(p: str) -> object:
                fairy = engine.raw_connection()
                try:
                    conn = fairy.driver_connection
                    conn.isolation_level = None
                    rows = conn.execute(sql, args(p)).fetchall()
                    if with_reset_pragma:
                        # What SQLAlchemy's pysqlite dialect runs when it puts the isolation
                        # level back after an AUTOCOMMIT checkout.
                        conn.isolation_level = ""
                        conn.execute("PRAGMA read_uncommitted = 0").close()
                    return rows
                finally:
                    fairy.close()

            yield Op(one, False)

    return setup


def _sqlite_exec_driver_sql(isolation: str) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        sql, order = library_upsert("sqlite")
        args = _positional(order)
        async with _sqlite_engine_with(env, isolation) as engine:
            bind: Any = (
                engine.execution_options(isolation_level="AUTOCOMMIT")
                if isolation == "per call"
                else engine
            )

            def one(p: str) -> object:
                if isolation == "transaction":
                    with bind.begin() as conn:  # BEGIN IMMEDIATE ... COMMIT
                        return conn.exec_driver_sql(sql, tuple(args(p))).first()
                with bind.connect() as conn:
                    return conn.exec_driver_sql(sql, tuple(args(p))).first()

            yield Op(one, False)

    return setup


@asynccontextmanager
async def _sqlite_engine_with(env: Env, isolation: str) -> AsyncIterator[Engine]:
    if isolation != "engine":
        async with sqlite_engine(env) as engine:
            yield engine
        return
    # AUTOCOMMIT as the engine's own level: nothing to put back at check-in, so no PRAGMA.
    engine = create_engine(f"sqlite:///{env.sqlite_path}", isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def _sqlite_core(narrow: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        statement = _core("sqlite")
        if narrow and hasattr(statement, "table"):
            statement = _narrowed(statement)
        async with sqlite_engine(env) as engine:
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

            def one(p: str) -> object:
                with autocommit.connect() as conn:
                    return conn.execute(statement, _values(p)).first()

            yield Op(one, False)

    return setup


def _narrowed(statement: Any) -> Any:
    """The same upsert returning only what the answer needs (no timestamps to parse)."""
    table = statement.table
    clone = statement._generate()  # a copy whose RETURNING can be replaced
    clone._returning = ()
    return clone.returning(
        table.c.last_value, table.c.separator, table.c.letter_width, table.c.digit_width
    )


@asynccontextmanager
async def sqlite_use_cases(env: Env) -> AsyncIterator[Op]:
    async with sqlite_engine(env) as engine:
        yield Op(use_cases(engine).allocate, False)


@asynccontextmanager
async def sqlite_lean(env: Env) -> AsyncIterator[Op]:
    async with sqlite_engine(env) as engine:
        yield Op(LeanSyncAllocator(engine).allocate, False)


@asynccontextmanager
async def sqlite_lean_pinned(env: Env) -> AsyncIterator[Op]:
    async with sqlite_engine(env) as engine:
        yield Op(LeanSyncAllocator(engine, pinned=True).allocate, False)


@asynccontextmanager
async def raw_aiosqlite(env: Env) -> AsyncIterator[Op]:
    sql, order = library_upsert("sqlite")
    args = _positional(order)
    conn = await aiosqlite.connect(env.sqlite_path, isolation_level=None, timeout=30)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL"):
        await conn.execute(f"PRAGMA {pragma}")
    try:
        yield Op(lambda p: conn.execute_fetchall(sql, args(p)))
    finally:
        await conn.close()


@asynccontextmanager
async def aiosqlite_lean_pinned(env: Env) -> AsyncIterator[Op]:
    async with sqlite_async_engine(env) as engine:
        yield Op(LeanAsyncAllocator(engine, pinned=True).allocate)


@asynccontextmanager
async def aiosqlite_use_cases(env: Env) -> AsyncIterator[Op]:
    async with sqlite_async_engine(env) as engine:
        yield Op(use_cases(engine).allocate)


@asynccontextmanager
async def aiosqlite_lean(env: Env) -> AsyncIterator[Op]:
    async with sqlite_async_engine(env) as engine:
        yield Op(LeanAsyncAllocator(engine).allocate)


@asynccontextmanager
async def connects_counted(env: Env) -> AsyncIterator[Op]:
    """use cases allocate(), counting new connections: PRAGMAs run once per connection."""
    async with sqlite_engine(env) as engine:
        opened = [0]
        event.listen(engine, "connect", lambda *_: opened.__setitem__(0, opened[0] + 1))
        allocate = use_cases(engine).allocate
        calls = [0]

        def one(p: str) -> object:
            calls[0] += 1
            return allocate(p)

        yield Op(one, False)
        print(f"    (connections opened during {calls[0]:,} allocations: {opened[0]})")


SQLITE: tuple[tuple[str, Step], ...] = (
    ("raw sqlite3, library statement, WAL, NORMAL, busy_timeout", raw_sqlite),
    ("+ SQLAlchemy pool: raw_connection() + close()", _sqlite_on_pool(False)),
    ("  same + the reset PRAGMA read_uncommitted after use", _sqlite_on_pool(True)),
    ("  lean prototype: + validation, IdRange, errors", sqlite_lean),
    ("  lean prototype, a connection per thread (no pool)", sqlite_lean_pinned),
    ("+ Connection, AUTOCOMMIT per call + exec_driver_sql", _sqlite_exec_driver_sql("per call")),
    ("  same, AUTOCOMMIT engine-wide (no reset PRAGMA)", _sqlite_exec_driver_sql("engine")),
    ("  same, BEGIN IMMEDIATE ... COMMIT (engine.begin())", _sqlite_exec_driver_sql("transaction")),
    ("+ Core statement: execute() (compiled cache)", _sqlite_core(False)),
    ("  Core, narrow RETURNING (no timestamps parsed)", _sqlite_core(True)),
    ("+ repository, service, entity: use cases allocate()", connects_counted),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_sqlite),
    ("raw aiosqlite (a worker thread hop per call)", raw_aiosqlite),
    ("lean prototype on aiosqlite", aiosqlite_lean),
    ("lean prototype on aiosqlite, its own connection (one hop)", aiosqlite_lean_pinned),
    ("aiosqlite: use cases allocate()", aiosqlite_use_cases),
    ("aiosqlite: IdGeneratorUtil.generate_id(p, async_engine)", util_aiosqlite),
)

# HTTP, in process: the bare endpoint, then the allocation route's pieces (bench/http_ladder.py).


def _on_ladder_app(path: str, *, block_cache: bool = False) -> Step:
    return route(path, block_cache=block_cache, ladder=True)


HTTP: tuple[tuple[str, Step], ...] = (
    ("bare FastAPI endpoint (an ID from a counter)", _on_ladder_app("/bare/{p}/ids")),
    ("+ the route's API key check (dependency)", _on_ladder_app("/ladder/auth/{p}/ids")),
    ("+ the route's path and query parameters", _on_ladder_app("/ladder/params/{p}/ids")),
    ("+ the route's metrics (counter, histogram)", _on_ladder_app("/ladder/metrics/{p}/ids")),
    ("+ the block cache: the real route", _on_ladder_app(ROUTE, block_cache=True)),
    ("  the real route, own transaction", _on_ladder_app(ROUTE)),
    ("  bare endpoint + the lean allocation", _on_ladder_app("/ladder/lean/{p}/ids")),
    ("  the route's pieces + the lean allocation", _on_ladder_app("/ladder/lean-route/{p}/ids")),
)

LADDERS = {"asyncpg": ASYNCPG, "psycopg": PSYCOPG, "sqlite": SQLITE, "http": HTTP}


async def climb(
    name: str, env: Env, clock: BackendClock | None, seconds: float = SECONDS_PER_STEP
) -> list[tuple[str, Cost]]:
    """Measure one ladder; print each step with its cost and its increment."""
    steps = LADDERS[name]
    paths = [Path(f"ladder-{name}", label, setup, pg=name != "sqlite") for label, setup in steps]
    where = "1 request at a time" if name == "http" else "1 client, hot prefix"
    print(f"Ladder: {name} (CPU µs per allocation, this process; {where})")
    measured = await measure_group(paths, env, clock, seconds=seconds)
    out, previous = [], None
    base = measured[0][1].client_us
    for path, cost in measured:
        step = path.name
        more = (
            ""
            if previous is None or step.startswith(" ")
            else (f"{cost.client_us - previous:+8.1f}")
        )
        backend = f"{cost.backend_us:7.1f}" if cost.backend_us is not None else "      -"
        print(
            f"  {step:<60} {cost.client_us:8.1f} µs {cost.client_us / base:6.2f}x {more:>8} "
            f"| backend {backend} µs | {cost.rate:8,.0f}/s"
        )
        if not step.startswith(" "):
            previous = cost.client_us
        out.append((step, cost))
    return out


def markdown(ladders: dict[str, list[tuple[str, Cost]]]) -> list[str]:
    """Return the ladders as one markdown table: each step, its cost and its increment."""
    lines = [
        "| ladder | step | CPU µs/ID | x raw | increment µs | Python calls/ID |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, steps in ladders.items():
        base = steps[0][1].client_us
        previous: float | None = None
        for step, cost in steps:
            aside = step.startswith(" ")
            more = "" if previous is None or aside else f"{cost.client_us - previous:+,.0f}"
            calls = f"{cost.calls:,.0f}" if cost.calls is not None else ""
            label = f"↳ {step.strip()}" if aside else step
            lines.append(
                f"| {name} | {label} | {cost.client_us:,.0f} | {cost.client_us / base:.2f}x "
                f"| {more} | {calls} |"
            )
            if not aside:
                previous = cost.client_us
    return lines


async def climb_all(names: list[str], env: Env, clock: BackendClock | None) -> dict[str, Any]:
    return {name: await climb(name, env, clock) for name in names}


def main(names: list[str]) -> None:
    env, database, cleanup = fresh_databases()
    clock = clock_for(env.pg_url.rsplit("/", 1)[0], database)
    try:
        asyncio.run(climb_all(names or list(LADDERS), env, clock))
    finally:
        if clock is not None:
            clock.close()
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
