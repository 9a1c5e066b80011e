"""Where the CPU above the raw statement goes, without a profiler: one layer added per step.

Each ladder starts from the raw driver running the library's own statement and adds one
piece of what the library's own-transaction path does, measured like bench/cpu.py (CPU of
this process per allocation, steps in turns, median of rounds). The difference between two
steps is what that piece costs, free of the distortion a profiler adds to Python-heavy code.

Asides (↳) measure, in the same run, what the path cost before it ran on the driver
connection: a SQLAlchemy ``Connection`` on the engine's AUTOCOMMIT view executing the Core
statement. SQLite's asides take that path apart: the pool's checkout and check-in, and the
``PRAGMA read_uncommitted`` that SQLAlchemy ran after every AUTOCOMMIT checkout, which made
SQLite prepare the statement again on every call.

``python bench/ladder.py [asyncpg|psycopg|sqlite|http ...]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from cpu import BackendClock, Cost, clock_for, fresh_databases, measure_group
from cpu_paths import (
    ROUTE,
    Env,
    Op,
    Path,
    async_engine,
    raw_aiosqlite,
    raw_asyncpg,
    raw_psycopg,
    raw_sqlite,
    route,
    sqlite_engine,
    sync_engine,
    use_cases_aiosqlite,
    use_cases_async,
    use_cases_sqlite,
    use_cases_sync,
    util_aiosqlite,
    util_async_engine,
    util_sqlite,
    util_sync_engine,
)
from internals import library_core_statement, library_statement, positional, statement_values

Step = Callable[[Env], Any]
SECONDS_PER_STEP = float(os.environ.get("IDMANAGER_BENCH_LADDER_SECONDS", "0.4"))
NOTE = (
    "Each ladder starts from the raw driver running the library's own statement and adds one "
    "piece of the library's own-transaction path per step (↳: an aside, not a step of the "
    "ladder: what the path cost before it ran on the driver connection, measured in the same "
    "run). CPU of the benchmark process per allocation, 1 client, hot prefix, median of "
    "rounds in turns; the increment is what the step's piece costs."
)


# The previous path: a Connection of the engine's AUTOCOMMIT view, the Core statement.


@asynccontextmanager
async def previous_async(env: Env) -> AsyncIterator[Op]:
    statement = library_core_statement("postgresql")
    async with async_engine(env) as engine:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

        async def one(p: str) -> object:
            async with autocommit.connect() as conn:
                return (await conn.execute(statement, statement_values(p))).first()

        yield Op(one)


def _previous_sync(sqlite: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        statement = library_core_statement("sqlite" if sqlite else "postgresql")
        engines = sqlite_engine(env) if sqlite else sync_engine(env)
        async with engines as engine:
            autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

            def one(p: str) -> object:
                with autocommit.connect() as conn:
                    return conn.execute(statement, statement_values(p)).first()

            yield Op(one, False)

    return setup


# The pool: a connection checked out and back around the raw statement.


@asynccontextmanager
async def asyncpg_on_pool(env: Env) -> AsyncIterator[Op]:
    sql, order = library_statement("asyncpg")
    args = positional(order)
    async with async_engine(env) as engine:

        async def one(p: str) -> object:
            fairy = await engine.raw_connection()
            try:
                return await fairy.driver_connection.fetchrow(sql, *args(p))
            finally:
                fairy.close()

        yield Op(one)


@asynccontextmanager
async def psycopg_on_pool(env: Env) -> AsyncIterator[Op]:
    sql, _ = library_statement("psycopg")
    async with sync_engine(env) as engine:

        def one(p: str) -> object:
            fairy = engine.raw_connection()
            try:
                conn = fairy.driver_connection
                conn.autocommit = True
                try:
                    return conn.execute(sql, statement_values(p)).fetchone()
                finally:
                    conn.autocommit = False
            finally:
                fairy.close()

        yield Op(one, False)


def _sqlite_on_pool(with_reset_pragma: bool) -> Step:
    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        sql, order = library_statement("sqlite")
        args = positional(order)
        async with sqlite_engine(env) as engine:

            def one(p: str) -> object:
                fairy = engine.raw_connection()
                try:
                    conn = fairy.driver_connection
                    rows = conn.execute(sql, args(p)).fetchall()
                    if with_reset_pragma:
                        # What SQLAlchemy's pysqlite dialect ran to put the isolation level
                        # back after an AUTOCOMMIT checkout: SQLite then expires every
                        # prepared statement of the connection.
                        conn.execute("PRAGMA read_uncommitted = 0").close()
                    return rows
                finally:
                    fairy.close()

            yield Op(one, False)

    return setup


ASYNCPG: tuple[tuple[str, Step], ...] = (
    ("raw asyncpg, the library's statement, one connection", raw_asyncpg),
    ("+ SQLAlchemy pool: engine.raw_connection() + close()", asyncpg_on_pool),
    ("+ the library: connect(engine).allocate(p)", use_cases_async),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_async_engine),
    ("  before: AUTOCOMMIT Connection + Core statement", previous_async),
)
PSYCOPG: tuple[tuple[str, Step], ...] = (
    ("raw psycopg, the library's statement, autocommit", raw_psycopg),
    ("+ SQLAlchemy pool: raw_connection(), autocommit on/off", psycopg_on_pool),
    ("+ the library: connect(engine).allocate(p)", use_cases_sync),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_sync_engine),
    ("  before: AUTOCOMMIT Connection + Core statement", _previous_sync(False)),
)
SQLITE: tuple[tuple[str, Step], ...] = (
    ("raw sqlite3, the library's statement, WAL, NORMAL", raw_sqlite),
    ("+ the library: connect(engine).allocate(p)", use_cases_sqlite),
    ("+ IdGeneratorUtil.generate_id(p, engine)", util_sqlite),
    ("  raw, in a pool checkout and check-in", _sqlite_on_pool(False)),
    ("  same + the reset PRAGMA after use (the re-prepare)", _sqlite_on_pool(True)),
    ("  before: AUTOCOMMIT Connection + Core statement", _previous_sync(True)),
    ("raw aiosqlite (a hop to its thread per call)", raw_aiosqlite),
    ("+ the library on aiosqlite (its own connection)", use_cases_aiosqlite),
    ("+ IdGeneratorUtil.generate_id(p, async_engine)", util_aiosqlite),
)


def _on_ladder_app(path: str, *, block_cache: bool = False) -> Step:
    return route(path, block_cache=block_cache, ladder=True)


HTTP: tuple[tuple[str, Step], ...] = (
    ("bare FastAPI endpoint (an ID from a counter)", _on_ladder_app("/bare/{p}/ids")),
    ("+ the allocation route, block cache", _on_ladder_app(ROUTE, block_cache=True)),
    ("+ the allocation route, own transaction", _on_ladder_app(ROUTE)),
    ("  bare endpoint + the key as a FastAPI dependency", _on_ladder_app("/ladder/auth/{p}/ids")),
    ("  bare endpoint + the library's allocation", _on_ladder_app("/ladder/allocate/{p}/ids")),
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
        aside = step.startswith(" ")
        if step.startswith("raw"):  # a second ladder in the same group (aiosqlite)
            base, previous = cost.client_us, None
        more = "" if previous is None or aside else f"{cost.client_us - previous:+8.1f}"
        backend = f"{cost.backend_us:7.1f}" if cost.backend_us is not None else "      -"
        print(
            f"  {step:<60} {cost.client_us:8.1f} µs {cost.client_us / base:6.2f}x {more:>8} "
            f"| backend {backend} µs | {cost.rate:8,.0f}/s"
        )
        if not aside:
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
            restart = step.startswith("raw")  # a second ladder in the same table (aiosqlite)
            if restart:
                base, previous = cost.client_us, None
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
