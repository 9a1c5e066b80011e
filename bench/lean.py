"""Prototype: a lean own-transaction allocation on the driver connection of the caller's engine.

What an own-transaction allocation must do, and nothing more:

1. validate and resolve ``(scope, prefix)`` and the count (the library's own checks);
2. check a connection out of the engine's pool (the user's pool, its size, its connect
   arguments: lock_timeout, TLS, the SQLite PRAGMAs);
3. run the one allocation statement, in autocommit, on the driver connection: prepared once
   per connection by the driver's own statement cache (asyncpg's LRU, psycopg's
   prepare_threshold, sqlite3's cache), so each call only binds and executes;
4. hand the connection back, or discard it if the failure may have left it unusable;
5. format the answer from ``last_value`` and the format columns (a lazy ``IdRange``).

No SQLAlchemy Connection, no execution context, no compiled-statement cache lookup, no row
mapping to an entity, no greenlet switch around the statement. The guarantees do not move:
one atomic statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING), committed when it
returns (autocommit: the database commits the statement's own transaction before answering),
errors classified as the library does. A refused allocation (an inactive or exhausted prefix:
no row comes back) takes the library's full path, which explains it with the precise error.

Bench-only: this is a measurement of how close the design gets to the raw statement, not the
library's code. ``python bench/lean.py`` prints the throughput figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any

import asyncpg
import psycopg
from internals import library_upsert, sequence_key, use_cases
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from idmanager import (
    IdFormat,
    IdRange,
    InvalidCountError,
    StorageError,
    create_async_engine,
    create_engine,
    migrate,
)

MAX_ORDINAL = 2**63 - 1  # last_value is a signed BIGINT
MAX_COUNT = 1_000_000
# The answer needs the new last_value and the format: not the timestamps, whose decoding
# (and, on SQLite, parsing from text) costs more than the rest of the row.
NARROW = " RETURNING last_value, separator, letter_width, digit_width"
_FORMATS: dict[tuple[str, int, int], IdFormat] = {}


def lean_statement(driver: str, *, narrow: bool = True) -> tuple[str, tuple[str, ...]]:
    """Return the library's allocation statement, with a narrow RETURNING if ``narrow``."""
    sql, order = library_upsert(driver)
    return (sql.split(" RETURNING ")[0] + NARROW if narrow else sql), order


def id_format(separator: str, letter_width: int, digit_width: int) -> IdFormat:
    # IdFormat validates itself on construction; a handful of formats exist, so keep them.
    key = (separator, letter_width, digit_width)
    fmt = _FORMATS.get(key)
    if fmt is None:
        fmt = _FORMATS[key] = IdFormat(separator, letter_width, digit_width)
    return fmt


class Keys:
    """Validated ``(scope, prefix)`` keys: the library's checks, run once per distinct key.

    A plain prefix resolves to the same key every time, so its checks (strip, upper-case,
    regular expressions) need not run on every allocation. A template (``INV{YYYY}``)
    depends on the date, so it is resolved on every call.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._known: dict[tuple[str, str], tuple[str, str]] = {}

    def __call__(self, prefix: str, scope: str, on: date | None) -> tuple[str, str]:
        plain = type(prefix) is str and type(scope) is str and "{" not in prefix
        if plain:
            known = self._known.get((prefix, scope))
            if known is not None:
                return known
        key = sequence_key(prefix, scope, on)
        if plain and "}" not in prefix:
            if len(self._known) >= self.size:
                self._known.clear()  # a flood of distinct prefixes must not grow memory
            self._known[(prefix, scope)] = key
        return key


def check_count(count: int) -> None:
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        raise InvalidCountError(f"Count must be between 1 and {MAX_COUNT:,}, got {count!r}")


def positional(order: tuple[str, ...]) -> Callable[[str, str, int], list[Any]]:
    """Return a builder of the statement's positional parameters for one allocation."""
    # New rows take the default format; created_by is None for an allocation.
    fixed = {"separator": "-", "letter_width": 3, "digit_width": 4, "created_by": None}
    template = [fixed.get(name) for name in order]
    at = {name: order.index(name) for name in ("scope", "prefix", "last_value", "room")}
    s, p, v, r = at["scope"], at["prefix"], at["last_value"], at["room"]

    def bind(scope: str, prefix: str, count: int) -> list[Any]:
        args = template.copy()
        args[s], args[p], args[v], args[r] = scope, prefix, count, MAX_ORDINAL - count
        return args

    return bind


def named(scope: str, prefix: str, count: int) -> dict[str, Any]:
    """Return the statement's named parameters (psycopg) for one allocation."""
    return {
        "scope": scope,
        "prefix": prefix,
        "last_value": count,
        "separator": "-",
        "letter_width": 3,
        "digit_width": 4,
        "created_by": None,
        "room": MAX_ORDINAL - count,
    }


def issued(prefix: str, count: int, row: Any) -> IdRange:
    """Return the IDs an allocation of ``count`` that ended at the row's last_value issued."""
    fmt = id_format(row[1], row[2], row[3])
    return IdRange(prefix, row[0] - count + 1, count, fmt)


def _storage_error(exc: BaseException) -> StorageError:
    """Classify a driver error as the library's translate_errors does."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "id_manager" in text and any(
        m in text for m in ("does not exist", "doesn't exist", "no such table")
    ):
        return StorageError(
            "Database not migrated: the id_managers table does not exist; "
            "run `idmanager migrate` first"
        )
    kind = "unavailable" if _connection_lost(exc) else "error"
    return StorageError(f"Database {kind}: {type(exc).__name__}: {text}")


def _connection_lost(exc: BaseException) -> bool:
    """Tell whether the connection may be unusable after ``exc`` (so not back to the pool)."""
    if isinstance(exc, asyncpg.PostgresError | psycopg.DatabaseError):
        # The server refused the statement and the session goes on; but an OperationalError
        # from psycopg (the connection broke) must be discarded.
        return isinstance(exc, psycopg.OperationalError)
    if isinstance(exc, sqlite3.Error):
        return isinstance(exc, sqlite3.OperationalError) and "locked" not in str(exc)
    # OSError, timeouts, cancellation, asyncpg's InterfaceError: the protocol state is unknown.
    return True


@contextmanager
def _checked_out(
    fairy: PoolProxiedConnection, *, close: bool = True
) -> Iterator[PoolProxiedConnection]:
    """Use a pooled connection: give it back after (if ``close``), discard it if a failure
    may have broken it, and classify the failure."""
    try:
        yield fairy
    except BaseException as exc:
        if _connection_lost(exc):
            fairy.invalidate(exc if isinstance(exc, Exception) else None)
        if isinstance(exc, Exception) and not isinstance(exc, StorageError):
            raise _storage_error(exc) from exc
        raise
    finally:
        if close:
            fairy.close()


class LeanAsyncAllocator:
    """Own-transaction allocation on an async engine (asyncpg or aiosqlite).

    ``pinned`` (aiosqlite only): the allocator keeps one connection of its own, made by the
    engine and detached from its pool. Every aiosqlite call is a hop to the connection's
    worker thread and back; a pooled connection costs a second hop at check-in (the pool's
    rollback), a pinned one does not. SQLite has one writer at a time anyway.
    """

    def __init__(self, engine: AsyncEngine, *, pinned: bool = False) -> None:
        self.engine = engine
        self.asyncpg = engine.dialect.driver == "asyncpg"
        self.sql, order = lean_statement("asyncpg" if self.asyncpg else "sqlite")
        self.bind = positional(order)
        self.keys = Keys()
        self.full = use_cases(engine)  # the library's path, for refusals only
        self.pinned = pinned and not self.asyncpg
        self._own: Any = None  # the pinned aiosqlite connection

    async def allocate(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        check_count(count)
        scope_key, name = self.keys(prefix, scope, on)
        args = self.bind(scope_key, name, count)
        if self.pinned:
            row = await self._pinned(args)
            if row is None:
                ids: IdRange = await self.full.allocate(prefix, count, scope=scope, on=on)
                return ids
            return issued(name, count, row)
        try:
            fairy = await self.engine.raw_connection()
        except Exception as exc:
            raise _storage_error(exc) from exc
        try:
            with _checked_out(fairy, close=self.asyncpg):
                row = await self._execute(fairy.driver_connection, args)
        finally:
            if not self.asyncpg:
                # aiosqlite's reset (a rollback) awaits its worker thread: it needs the
                # greenlet bridge. asyncpg's is a no-op outside a transaction, so it is not.
                await greenlet_spawn(fairy.close)
        if row is None:
            ids = await self.full.allocate(prefix, count, scope=scope, on=on)
            return ids
        return issued(name, count, row)

    async def _pinned(self, args: list[Any]) -> Any:
        if self._own is None:
            try:
                fairy = await self.engine.raw_connection()
            except Exception as exc:
                raise _storage_error(exc) from exc
            fairy.detach()  # ours now: the pool forgets it and will not reset it
            self._own = fairy
        try:
            return await self._execute(self._own.dbapi_connection.driver_connection, args)
        except BaseException as exc:
            if _connection_lost(exc):
                fairy, self._own = self._own, None
                await greenlet_spawn(fairy.invalidate, exc if isinstance(exc, Exception) else None)
            if isinstance(exc, Exception):
                raise _storage_error(exc) from exc
            raise

    async def _execute(self, connection: Any, args: list[Any]) -> Any:
        if self.asyncpg:
            # Outside a transaction, asyncpg runs the statement in its own: committed on return.
            return await connection.fetchrow(self.sql, *args)
        if connection.isolation_level is not None:
            connection.isolation_level = None  # see LeanSyncAllocator._sqlite
        rows = await connection.execute_fetchall(self.sql, args)
        return rows[0] if rows else None


class LeanSyncAllocator:
    """Own-transaction allocation on a sync engine (psycopg or sqlite3).

    ``pinned`` (SQLite only): each thread keeps a connection of its own, made by the engine
    (its connect hook sets WAL, the busy timeout) and detached from its pool, so that an
    allocation does not pay a pool checkout and check-in. SQLite connections are cheap and
    its locks are the file's, so this changes nothing for the other connections.
    """

    def __init__(self, engine: Engine, *, pinned: bool = False) -> None:
        self.engine = engine
        self.psycopg = engine.dialect.driver == "psycopg"
        self.sql, order = lean_statement("psycopg" if self.psycopg else "sqlite")
        self.bind = positional(order)
        self.keys = Keys()
        self.full = use_cases(engine)
        self.pinned = threading.local() if pinned and not self.psycopg else None

    def allocate(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        check_count(count)
        scope_key, name = self.keys(prefix, scope, on)
        if self.pinned is not None:
            row = self._pinned(self.bind(scope_key, name, count))
        else:
            try:
                fairy = self.engine.raw_connection()
            except Exception as exc:
                raise _storage_error(exc) from exc
            with _checked_out(fairy):
                if self.psycopg:
                    row = self._psycopg(fairy.driver_connection, named(scope_key, name, count))
                else:
                    row = self._sqlite(fairy.driver_connection, self.bind(scope_key, name, count))
        if row is None:
            ids: IdRange = self.full.allocate(prefix, count, scope=scope, on=on)
            return ids
        return issued(name, count, row)

    def _psycopg(self, connection: psycopg.Connection[Any], values: dict[str, Any]) -> Any:
        # Autocommit for this one statement (one round trip: no BEGIN, no COMMIT), then back
        # to what the pool handed out, so the engine's other users see no change.
        previous = connection.autocommit
        connection.autocommit = True
        try:
            return connection.execute(self.sql, values).fetchone()
        finally:
            connection.autocommit = previous

    def _sqlite(self, connection: sqlite3.Connection, args: list[Any]) -> Any:
        # The library's connect hook sets isolation_level None (no implicit BEGIN: each
        # statement commits itself); SQLAlchemy's reset after an AUTOCOMMIT checkout sets ""
        # again, under which sqlite3 would BEGIN before the INSERT and leave it uncommitted.
        if connection.isolation_level is not None:
            connection.isolation_level = None
        # fetchall steps the statement to its end: only then does SQLite commit it.
        rows = connection.execute(self.sql, args).fetchall()
        return rows[0] if rows else None

    def _pinned(self, args: list[Any]) -> Any:
        assert self.pinned is not None
        fairy = getattr(self.pinned, "fairy", None)
        if fairy is None:
            try:
                fairy = self.engine.raw_connection()
            except Exception as exc:
                raise _storage_error(exc) from exc
            fairy.detach()  # ours now: the pool forgets it and will not reset it
            self.pinned.fairy = fairy
        try:
            return self._sqlite(fairy.dbapi_connection, args)
        except BaseException as exc:
            if _connection_lost(exc):
                self.pinned.fairy = None
                fairy.invalidate(exc if isinstance(exc, Exception) else None)
            if isinstance(exc, Exception):
                raise _storage_error(exc) from exc
            raise


# Throughput: raw vs library vs lean, in the configurations of issue 15.

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_LEAN_SECONDS", "1.5"))
WARM_UP = 0.3
CONFIGS = ((True, 1), (False, 8), (False, 32))  # (hot prefix?, clients)


@dataclass(frozen=True)
class Figure:
    """IDs per second, the CPU this process spent per ID (µs), and the raw figure beside it."""

    label: str
    ids_per_s: float
    cpu_us: float
    base: Figure | None = None

    @property
    def ratio(self) -> float | None:
        return self.ids_per_s / self.base.ids_per_s if self.base else None


def _prefixes(hot: bool) -> list[str]:
    return ["L" + uuid.uuid4().hex[:10].upper() for _ in range(1 if hot else 100)]


async def async_rate(
    one: Callable[[str], Awaitable[object]], hot: bool, clients: int, seconds: float = SECONDS
) -> tuple[float, float]:
    """Run ``clients`` tasks calling ``one`` for ``seconds`` after a warm-up: IDs/s, µs/ID."""
    prefixes = _prefixes(hot)
    done = 0

    async def client(i: int, stop: float) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(prefixes[i % len(prefixes)])
            done += 1

    await asyncio.gather(*(client(i, time.perf_counter() + WARM_UP) for i in range(clients)))
    done, cpu, start = 0, time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
    elapsed = time.perf_counter() - start
    return done / elapsed, (time.process_time() - cpu) / max(done, 1) * 1e6


def thread_rate(
    one: Callable[[str], object], hot: bool, clients: int, seconds: float = SECONDS
) -> tuple[float, float]:
    """Run ``clients`` threads (this one first) calling ``one``: IDs/s, µs/ID."""
    prefixes = _prefixes(hot)
    counts = [0] * clients

    def client(i: int, stop: float) -> None:
        done = 0
        while time.perf_counter() < stop:
            one(prefixes[(i + done * clients) % len(prefixes)])
            done += 1
        counts[i] = done

    def run(seconds: float) -> float:
        stop = time.perf_counter() + seconds
        others = [threading.Thread(target=client, args=(i, stop)) for i in range(1, clients)]
        for t in others:
            t.start()
        client(0, stop)  # sqlite3 connections belong to the thread that opened them
        for t in others:
            t.join()
        return time.perf_counter()

    run(WARM_UP)
    cpu, start = time.process_time(), time.perf_counter()
    elapsed = run(seconds) - start
    done = sum(counts)
    return done / elapsed, (time.process_time() - cpu) / max(done, 1) * 1e6


def _figure(label: str, measured: tuple[float, float], base: Figure | None = None) -> Figure:
    figure = Figure(label, measured[0], measured[1], base)
    shown = f"{figure.ratio:5.2f}x" if figure.ratio is not None else "     "
    print(
        f"  {label:<62} {figure.ids_per_s:>9,.0f} IDs/s {shown} {figure.cpu_us:>7.1f} µs CPU/ID",
        flush=True,
    )
    return figure


def _where(hot: bool, clients: int, unit: str = "clients") -> str:
    return f"{'hot prefix' if hot else '100 prefixes'}, {clients} {unit}"


async def asyncpg_rates(url: str) -> list[Figure]:
    """Raw asyncpg pool vs the library's calls vs the lean path, per configuration."""
    sql, order = library_upsert("asyncpg")
    bind = positional(order)
    out = []
    for hot, clients in CONFIGS:
        where = _where(hot, clients)
        base: Figure | None = None
        # asyncpg's pool sends a reset query (RESET ALL, ...) on every release: bench/run.py's
        # raw baseline pays it; the physical limit, without it, is the baseline here.
        for reset in (False, True):
            options: dict[str, Any] = {} if reset else {"reset": _no_reset}
            pool = await asyncpg.create_pool(url, min_size=clients, max_size=clients, **options)

            async def raw(p: str, pool: asyncpg.Pool = pool) -> object:
                async with pool.acquire() as conn:
                    return await conn.fetchrow(sql, *bind("", p, 1))

            label = "with its reset query (run.py's raw)" if reset else "no reset query"
            rate = await async_rate(raw, hot, clients)
            out.append(_figure(f"asyncpg raw upsert, pool {label}, {where}", rate, base))
            base = base or out[-1]
            await pool.close()
        engine = create_async_engine(url, pool_size=clients, max_overflow=0)
        library, lean = use_cases(engine), LeanAsyncAllocator(engine)
        calls: list[tuple[str, Callable[[str], Awaitable[object]]]] = [
            ("IdGeneratorUtil.generate_id(p, engine)", partial(util, engine=engine)),
            ("IdManagerUseCases.allocate", library.allocate),
            ("lean", lean.allocate),
        ]
        for name, call in calls:
            out.append(
                _figure(f"asyncpg {name}, {where}", await async_rate(call, hot, clients), base)
            )
        await engine.dispose()
    return out


async def _no_reset(_connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release."""


def util(prefix: str, engine: Any) -> Any:
    from idmanager import IdGeneratorUtil

    return IdGeneratorUtil.generate_id(prefix, engine)


def psycopg_rates(url: str) -> list[Figure]:
    """Raw psycopg connections (one per thread) vs the library vs the lean path."""
    sql, _ = library_upsert("psycopg")
    out = []
    for hot, clients in CONFIGS:
        where = _where(hot, clients, "threads")
        local = threading.local()
        opened: list[psycopg.Connection[Any]] = []

        def raw(p: str, local: threading.local = local, opened: list[Any] = opened) -> object:
            if not hasattr(local, "conn"):
                local.conn = psycopg.connect(url, autocommit=True)
                opened.append(local.conn)
            return local.conn.execute(sql, named("", p, 1), prepare=True).fetchone()

        base = _figure(f"psycopg raw upsert, {where}", thread_rate(raw, hot, clients))
        for conn in opened:
            conn.close()
        out.append(base)
        engine = create_engine(url, pool_size=clients, max_overflow=0)
        library, lean = use_cases(engine), LeanSyncAllocator(engine)
        calls: list[tuple[str, Callable[[str], object]]] = [
            ("IdGeneratorUtil.generate_id(p, engine)", partial(util, engine=engine)),
            ("SyncIdManagerUseCases.allocate", library.allocate),
            ("lean", lean.allocate),
        ]
        for name, call in calls:
            out.append(_figure(f"psycopg {name}, {where}", thread_rate(call, hot, clients), base))
        engine.dispose()
    return out


def sqlite_rates(path: str) -> list[Figure]:
    """Raw sqlite3 at the library's settings vs the library vs the lean path, one client."""
    sql, order = library_upsert("sqlite")
    bind = positional(order)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    raw = thread_rate(lambda p: conn.execute(sql, bind("", p, 1)).fetchall(), True, 1)
    base = _figure("sqlite3 raw upsert (WAL, NORMAL), hot prefix, 1 client", raw)
    out = [base]
    engine = create_engine(f"sqlite:///{path}")
    calls: list[tuple[str, Callable[[str], object]]] = [
        ("IdGeneratorUtil.generate_id(p, engine)", partial(util, engine=engine)),
        ("SyncIdManagerUseCases.allocate", use_cases(engine).allocate),
        ("lean, pooled connection", LeanSyncAllocator(engine).allocate),
        ("lean, a connection per thread", LeanSyncAllocator(engine, pinned=True).allocate),
    ]
    for name, call in calls:
        out.append(_figure(f"sqlite {name}, 1 client", thread_rate(call, True, 1), base))
    engine.dispose()
    conn.close()
    out += asyncio.run(_aiosqlite_rates(path, base))
    return out


async def _aiosqlite_rates(path: str, base: Figure) -> list[Figure]:
    engine = create_async_engine(f"sqlite:///{path}")
    calls: list[tuple[str, Callable[[str], Awaitable[object]]]] = [
        ("IdGeneratorUtil.generate_id(p, async engine)", partial(util, engine=engine)),
        ("lean, its own connection", LeanAsyncAllocator(engine, pinned=True).allocate),
    ]
    out = []
    for name, call in calls:
        out.append(_figure(f"aiosqlite {name}, 1 client", await async_rate(call, True, 1), base))
    await engine.dispose()
    return out


NOTE = (
    "bench/lean.py: the allocation statement run in autocommit on the driver connection of "
    "the engine's pool (asyncpg, psycopg, sqlite3), with the library's input checks, its "
    "error classification and a lazy IdRange for the answer; refusals (inactive or exhausted "
    "prefix) take the library's full path. A prototype in bench/, not the library. Raw: the "
    "same statement on the bare driver (asyncpg through its own pool without the reset query "
    "it sends on every release, the physical limit; the pool with it, the raw of the figures "
    "above, is shown beside it; psycopg and sqlite3 one connection per thread). Ratios are "
    "throughput over raw in the same configuration, measured seconds apart: higher is better."
)


def markdown(figures: list[Figure]) -> list[str]:
    """Return the figures as a markdown table."""
    lines = [
        "| measurement | IDs/s | x raw (throughput) | CPU µs/ID, this process |",
        "| --- | ---: | ---: | ---: |",
    ]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "(baseline)"
        lines.append(f"| {f.label} | {f.ids_per_s:,.0f} | {ratio} | {f.cpu_us:,.0f} |")
    return lines


def run(pg: str = PG) -> list[Figure]:
    """Measure on a fresh PostgreSQL database and a temporary SQLite file (both removed)."""
    name = "idm_bench_lean_" + uuid.uuid4().hex[:8]
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{pg}/{name}"
    print("Lean own-transaction allocation vs the raw statement and the library (IDs/s)")
    try:
        migrate(url)
        out = asyncio.run(asyncpg_rates(url)) + psycopg_rates(url)
    finally:
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    folder = tempfile.mkdtemp(prefix="idm_bench_lean_")
    path = os.path.join(folder, "bench.db")
    try:
        migrate(f"sqlite:///{path}")
        out += sqlite_rates(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


if __name__ == "__main__":
    run()
