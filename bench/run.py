"""`make bench`: IdManager against the physical limit, every baseline measured in the same run.

Prints a table of absolute figures and ratios and writes docs/benchmarks.md with a plot,
docs/throughput.png. Not part of `make test`: it measures, it asserts nothing, and it wants a
quiet machine. Databases: a fresh PostgreSQL database on IDMANAGER_BENCH_PG (default
127.0.0.1:5432) and a temporary SQLite file. Each figure is one run of a few seconds
(IDMANAGER_BENCH_SECONDS, default 3) after a warm-up; the whole run takes a few minutes.
Then the CPU per allocation of every path beside its raw statement, where it goes, and the
lean own-transaction prototype (bench/cpu.py, ladder.py, lean.py; about 3 more minutes,
IDMANAGER_BENCH_CPU=0 skips them).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import http_bench
import report
from internals import use_cases as use_cases_of
from report import record
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from idmanager import (
    BlockCache,
    IdGeneratorUtil,
    SyncBlockCache,
    create_async_engine,
    create_engine,
    format_id,
    migrate,
)

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_SECONDS", "3"))
WARM_UP = 0.5
CLIENTS = (1, 8, 32)
UPSERT = (
    "INSERT INTO id_managers (scope, prefix, last_value) VALUES ('', $1, 1) "
    "ON CONFLICT (scope, prefix) DO UPDATE SET last_value = id_managers.last_value + 1 "
    "RETURNING last_value"
)


def prefix() -> str:
    return "B" + uuid.uuid4().hex[:10].upper()


async def rate(
    clients: int,
    one: Callable[[str], Awaitable[object]],
    hot: bool = True,
    seconds: float = SECONDS,
) -> float:
    """Return operations per second of ``clients`` tasks looping for ``seconds`` (warmed up)."""
    prefixes = [prefix() for _ in range(1 if hot else 100)]
    done = 0

    async def client(i: int, stop: float) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(prefixes[i % len(prefixes)])
            done += 1

    await asyncio.gather(*(client(i, time.perf_counter() + WARM_UP) for i in range(clients)))
    done = 0
    start = time.perf_counter()
    await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
    return done / (time.perf_counter() - start)


@asynccontextmanager
async def raw_pool(url: str, size: int) -> AsyncIterator[asyncpg.Pool]:
    # Opened per measurement, like the engines: the PostgreSQL server's connections are few.
    pool = await asyncpg.create_pool(url, min_size=size, max_size=size)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def engine_of(url: str, size: int = 32) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url, pool_size=size, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def postgres() -> None:
    name = "idm_bench_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(PG + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG}/{name}"
    try:
        migrate(url)
        raw32 = await own_transaction(url)
        await callers_transaction(url)
        await bulk(url)
        await block_cache(url)
        await asyncio.to_thread(http, url, raw32)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def own_transaction(url: str) -> dict[int, report.Row]:
    """Raw asyncpg autocommit upsert vs ``IdManagerUseCases.allocate``; return raw hot rows."""
    print("PostgreSQL: allocation of one ID, own transaction (IDs/s)")
    hot_raw: dict[int, report.Row] = {}
    for hot in (True, False):
        where = "hot prefix" if hot else "100 prefixes"
        for clients in CLIENTS:
            async with raw_pool(url, clients) as pool:

                async def raw(p: str, pool: asyncpg.Pool = pool) -> object:
                    async with pool.acquire() as conn:
                        return await conn.fetchval(UPSERT, p)

                base = record(
                    "pg",
                    f"raw asyncpg autocommit upsert, {where}, {clients} clients",
                    await rate(clients, raw, hot),
                    "IDs/s",
                    series=f"raw asyncpg upsert, {where}",
                    clients=clients,
                )
            if hot:
                hot_raw[clients] = base
            async with engine_of(url, clients) as engine:
                use_cases = use_cases_of(engine)

                async def own(p: str, use_cases: Any = use_cases) -> object:
                    return await use_cases.allocate(p)

                record(
                    "pg",
                    f"library, own transaction, {where}, {clients} clients",
                    await rate(clients, own, hot),
                    "IDs/s",
                    base,
                    series=f"library, own transaction, {where}",
                    clients=clients,
                )
    return hot_raw


async def callers_transaction(url: str) -> None:
    print("PostgreSQL: caller's transaction, a session per ID committed by the caller (IDs/s)")
    statement = text(UPSERT.replace("$1", ":p"))
    for clients in (1, 32):
        async with engine_of(url, clients) as engine:

            async def bare_session(p: str, engine: AsyncEngine = engine) -> object:
                async with AsyncSession(engine) as session:
                    result = (await session.execute(statement, {"p": p})).scalar()
                    await session.commit()
                    return result

            async def caller(p: str, engine: AsyncEngine = engine) -> object:
                async with AsyncSession(engine) as session:
                    result = await IdGeneratorUtil.generate_id(p, session)
                    await session.commit()
                    return result

            base = record(
                "pg",
                f"bare SQLAlchemy session, same upsert, {clients} clients",
                await rate(clients, bare_session),
                "IDs/s",
            )
            record(
                "pg",
                f"library in caller's session, {clients} clients",
                await rate(clients, caller),
                "IDs/s",
                base,
            )


async def bulk(url: str) -> None:
    print("PostgreSQL: bulk of 1,000,000 IDs in one call")
    p = prefix()
    start = time.perf_counter()
    [format_id(p, n) for n in range(1, 1_000_001)]
    naive = time.perf_counter() - start
    base = record("pg", "naive per-ID formatting of 1,000,000 IDs (ms)", naive * 1000, "ms")
    async with engine_of(url, 2) as engine:
        use_cases = use_cases_of(engine)
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            await use_cases.run(lambda s: s.bulk_generate_ids(prefix(), 1_000_000))
            runs.append(time.perf_counter() - start)
    record("pg", "library bulk_generate_ids(1,000,000) (ms)", min(runs) * 1000, "ms", base)


async def block_cache(url: str) -> None:
    """The block cache in one process, no HTTP: asyncio tasks, then threads."""
    print("PostgreSQL: block cache, one process (IDs/s)")
    async with engine_of(url, 4) as engine:
        use_cases = use_cases_of(engine)
        base = record(
            "pg",
            "library, own transaction, hot prefix, 1 client (for scale)",
            await rate(1, lambda p: use_cases.allocate(p), seconds=1.0),
            "IDs/s",
        )
        cache = BlockCache(use_cases.run)
        for tasks in (1, 32):
            record(
                "pg",
                f"block cache, asyncio, hot prefix, {tasks} tasks",
                await ids_per_second(lambda p: cache.generate_id(p), tasks),
                "IDs/s",
                base,
                series="block cache (library, asyncio tasks)",
                clients=tasks,
            )
        await cache.close()
    sync_engine = create_engine(url, pool_size=4)
    sync_cache = SyncBlockCache(use_cases_of(sync_engine).run)
    for threads in (1, 4):
        record(
            "pg",
            f"block cache, threads, hot prefix, {threads} threads",
            threaded_rate(sync_cache.generate_id, threads),
            "IDs/s",
            base,
        )
    sync_cache.close()
    sync_engine.dispose()
    stats = sync_cache.stats
    print(f"  (threads: {stats.blocks_fetched} blocks, {stats.ids_handed_back:,} handed back)")


async def ids_per_second(one: Callable[[str], Awaitable[str]], tasks: int) -> float:
    """Like ``rate``, with the clock read once per 1,000 IDs: the cache is faster than it."""
    p = prefix()
    done = 0

    async def task(stop: float) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            for _ in range(1000):
                await one(p)
            done += 1000

    await asyncio.gather(*(task(time.perf_counter() + WARM_UP) for _ in range(tasks)))
    done = 0
    start = time.perf_counter()
    await asyncio.gather(*(task(start + SECONDS) for _ in range(tasks)))
    return done / (time.perf_counter() - start)


def threaded_rate(one: Callable[[str], str], threads: int) -> float:
    p = prefix()
    counts = [0] * threads

    def worker(i: int, stop: float) -> None:
        while time.perf_counter() < stop:
            for _ in range(1000):
                one(p)
            counts[i] += 1000

    for seconds in (WARM_UP, SECONDS):
        counts = [0] * threads
        start = time.perf_counter()
        pool = [threading.Thread(target=worker, args=(i, start + seconds)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return sum(counts) / (time.perf_counter() - start)


def http(url: str, raw: dict[int, report.Row]) -> None:
    """uvicorn with 1 and 2 workers: own transaction and block cache vs the bare endpoint."""
    load = http_bench.generator()
    report.NOTES["http"] = (
        f"HTTP: {http_bench.server_stack()}, access log off, an API key checked per request, "
        "workers started by `idmanager.api.serving.run` (TCP_NODELAY in every worker); "
        f"load generator: {load}, keep-alive, POST, one connection per client (with 2 "
        "workers, in two batches 0.25 s apart: a single burst of connections all lands on "
        "the first worker to wake). CPU in the notes: cores used during the run (1.00 = one "
        "core busy); postgres counts every backend on the machine."
    )
    print(f"HTTP: POST one ID per request, load generator {load} (IDs/s = requests/s)")
    last_bare: dict[int, report.Row] = {}
    for workers in (1, 2):
        label = f"{workers} worker" + ("s" if workers > 1 else "")
        clients = CLIENTS if workers == 1 else (32,)
        for cache in (False, True):
            mode = "block cache" if cache else "own transaction"
            with http_bench.Server(url, workers=workers, block_cache=cache) as server:
                bare = last_bare = {
                    n: measure_http(
                        server,
                        "/bare/HOT/ids",
                        n,
                        f"HTTP bare FastAPI endpoint ({mode} server), {label}, {n} clients",
                        series="" if cache else f"HTTP bare FastAPI endpoint, {label}",
                    )
                    for n in clients
                }
                hot = prefix()
                for n in clients:
                    # The targets: own transaction vs the database's statement rate, the
                    # block cache vs the bare endpoint of the same server.
                    measure_http(
                        server,
                        f"/api/v1/prefixes/{hot}/ids",
                        n,
                        f"HTTP IdManager, {mode}, hot prefix, {label}, {n} clients",
                        base=bare[n] if cache else raw[n],
                        series=f"HTTP IdManager, {mode}, {label}",
                    )
    # What `uvicorn --workers 2` (and `idmanager serve --workers 2` through it) gives as is.
    with http_bench.Server(url, workers=2, block_cache=False, stock=True) as server:
        measure_http(
            server,
            "/bare/HOT/ids",
            32,
            "HTTP bare endpoint, 2 workers by plain uvicorn.run (uvicorn #3149), 32 clients",
            base=last_bare[32],
        )


def measure_http(
    server: http_bench.Server,
    path: str,
    clients: int,
    name: str,
    *,
    base: report.Row | None = None,
    series: str = "",
) -> report.Row:
    server.drive(path, clients, 1)  # warm up: connections, caches, the prefix's row
    load = server.drive(path, clients, SECONDS)
    if load.errors:
        print(f"  ({load.errors} failed requests in '{name}')")
    return record(
        "http",
        name,
        load.rate,
        "IDs/s",
        base,
        note=load.note(http_bench.generator().split()[0]),
        series=series,
        clients=clients if series else None,
    )


def sqlite_runs() -> None:
    folder = tempfile.mkdtemp()
    path = Path(folder) / "bench.db"
    migrate(f"sqlite:///{path}")
    print("SQLite: one client, one ID per committed transaction (IDs/s)")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    p, done, stop = prefix(), 0, time.perf_counter() + SECONDS
    start = time.perf_counter()
    while time.perf_counter() < stop:
        conn.execute(UPSERT.replace("$1", "?"), (p,)).fetchone()
        done += 1
    base = record(
        "sqlite", "raw sqlite3 autocommit upsert", done / (time.perf_counter() - start), "IDs/s"
    )
    engine = create_engine(f"sqlite:///{path}")
    use_cases = use_cases_of(engine)
    p, done, stop = prefix(), 0, time.perf_counter() + SECONDS
    start = time.perf_counter()
    while time.perf_counter() < stop:
        use_cases.allocate(p)
        done += 1
    record(
        "sqlite",
        "library, own transaction (sync)",
        done / (time.perf_counter() - start),
        "IDs/s",
        base,
    )
    start = time.perf_counter()
    use_cases.run(lambda s: s.bulk_generate_ids(prefix(), 1_000_000))
    record(
        "sqlite",
        "library bulk_generate_ids(1,000,000) (ms)",
        (time.perf_counter() - start) * 1000,
        "ms",
    )
    engine.dispose()


def orm_runs() -> None:
    """bench/orm.py: the ORM's number drawn at flush vs at commit, 32 business transactions."""
    try:
        import orm  # written beside this file; a failure there must not lose the rest

        figures = orm.main(PG, min(SECONDS, orm.SECONDS))
    except Exception as exc:
        print(f"  bench/orm.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["orm"] = f"The ORM benchmark (bench/orm.py) failed: {type(exc).__name__}."
        return
    name = f"ORM, {figures.clients} transactions with {figures.work_ms:.0f} ms of work"
    start = record("orm", f"{name}, number drawn at flush", figures.at_start, "docs/s")
    record("orm", f"{name}, number drawn at commit", figures.at_commit, "docs/s", start)
    record("orm", f"{name}, by hand on raw asyncpg, at commit", figures.by_hand, "docs/s")


def cpu_runs() -> None:
    """bench/cpu.py, ladder.py, lean.py: CPU per allocation, where it goes, the lean path."""
    try:
        # Written beside this file; a failure there must not lose the rest.
        import cpu
        import ladder
        import lean

        rows = asyncio.run(cpu.run(PG))
        ladders = _ladders()
        figures = lean.run(PG)
    except Exception as exc:
        print(f"  bench/cpu.py, ladder.py or lean.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["cpu"] = f"The CPU benchmarks failed: {type(exc).__name__}."
        return
    for where, path, cost, _base in rows:
        record("cpu", f"{path.group}: {path.name}, {where}", cost.client_us, "µs", show=False)
    report.SECTIONS.append(("CPU per allocation", [cpu.NOTE, "", *cpu.markdown(rows)]))
    report.SECTIONS.append(
        ("Where the CPU goes: one layer at a time", [ladder.NOTE, "", *ladder.markdown(ladders)])
    )
    kept: dict[str, report.Row] = {}
    for f in figures:
        base = kept.get(f.base.label) if f.base is not None else None
        kept[f.label] = record("lean", f.label, f.ids_per_s, "IDs/s", base, show=False)
    report.SECTIONS.append(
        (
            "The lean own-transaction prototype (bench/lean.py)",
            [lean.NOTE, "", *lean.markdown(figures)],
        )
    )


def _ladders() -> dict[str, list[tuple[str, Any]]]:
    import cpu
    import ladder

    env, database, cleanup = cpu.fresh_databases(PG)
    clock = cpu.clock_for(PG, database)
    try:
        return asyncio.run(ladder.climb_all(list(ladder.LADDERS), env, clock))
    finally:
        if clock is not None:
            clock.close()
        cleanup()


def main() -> None:
    started = time.perf_counter()
    report.start()
    asyncio.run(postgres())
    orm_runs()
    sqlite_runs()
    if os.environ.get("IDMANAGER_BENCH_CPU", "1") != "0":  # 0: skip the CPU benchmarks
        cpu_runs()
    report.write(time.perf_counter() - started)


if __name__ == "__main__":
    main()
