"""`make bench`: IdManager against the physical limit, every baseline measured in the same run.

Prints a table of absolute figures and ratios and writes docs/benchmarks.md with a plot,
docs/throughput.png. Not part of `make test`: it measures, it asserts nothing, and it wants a
quiet machine. Databases: a fresh PostgreSQL database on IDMANAGER_BENCH_PG (default
127.0.0.1:5432) and a temporary SQLite file. Each figure is one run of a few seconds
(IDMANAGER_BENCH_SECONDS, default 3) after a warm-up; the whole run takes a few minutes.
Then the scale figures (bench/scale.py: sequences in use, a table of a million sequences, a
bulk of ten million IDs, the block cache's memory; IDMANAGER_BENCH_SCALE=0 skips them), the
cost of an Idempotency-Key (bench/idempotency.py), and the CPU per allocation of every path
beside its raw statement, where it goes and the top costs of each (bench/cpu.py, ladder.py,
profiles.py; IDMANAGER_BENCH_CPU=0 skips them). The whole run takes about 10 minutes.

Raw baselines run the library's own statement (``UPDATE … RETURNING`` the four columns the
answer needs, compiled from the repository) on the bare driver: asyncpg through its own pool
without the reset query it would send on every release, sqlite3 at the library's settings.
Their sequences are created first, as the library's are by its first allocation.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
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
from internals import (
    MINIMAL,
    create_sequences,
    library_statement,
    positional,
    raw_pool,
)
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
UPSERT = MINIMAL  # the issue's raw statement: the smallest upsert


def prefix() -> str:
    return "B" + uuid.uuid4().hex[:10].upper()


def names_of(hot: bool) -> list[str]:
    return [prefix() for _ in range(1 if hot else 100)]


async def rate(
    clients: int,
    one: Callable[[str], Awaitable[object]],
    hot: bool = True,
    seconds: float = SECONDS,
    names: list[str] | None = None,
    warm_up: float = WARM_UP,
) -> float:
    """Return operations per second of ``clients`` tasks looping for ``seconds`` (warmed up)."""
    prefixes = names or names_of(hot)
    done = 0

    async def client(i: int, stop: float) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(prefixes[i % len(prefixes)])
            done += 1

    await asyncio.gather(*(client(i, time.perf_counter() + warm_up) for i in range(clients)))
    done = 0
    start = time.perf_counter()
    await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
    return done / (time.perf_counter() - start)


# Rounds of SECONDS / ROUNDS each: at one client a round of a second swings by 10% on this
# shared machine (IdGeneratorUtil 0.87x–1.09x the raw statement in four runs, for a facade
# costing 1% more CPU); the median of five is steadier than of three.
ROUNDS = 5


async def alternated(
    clients: int, paths: list[Callable[[str], Awaitable[object]]], names: list[str]
) -> list[float]:
    """Measure each path in turn, ROUNDS times (the order reversed every other round), each
    for SECONDS / ROUNDS; return their medians. A burst of load from another process then
    lands on one round of every path, not on one path."""
    runs: list[list[float]] = [[] for _ in paths]
    for r in range(ROUNDS):
        order = range(len(paths)) if r % 2 == 0 else reversed(range(len(paths)))
        for i in order:
            warm_up = WARM_UP if r == 0 else 0.1
            measured = await rate(clients, paths[i], True, SECONDS / ROUNDS, names, warm_up)
            runs[i].append(measured)
    return [statistics.median(run) for run in runs]


def alternated_sync(paths: list[Callable[[str], object]], names: list[str]) -> list[float]:
    """:func:`alternated` for one thread calling sync paths."""
    runs: list[list[float]] = [[] for _ in paths]
    for r in range(ROUNDS):
        order = range(len(paths)) if r % 2 == 0 else reversed(range(len(paths)))
        for i in order:
            runs[i].append(_sqlite_rate(paths[i], names, SECONDS / ROUNDS))
    return [statistics.median(run) for run in runs]


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
        await own_transaction(url)
        await callers_transaction(url)
        await bulk(url)
        await block_cache(url)
        await asyncio.to_thread(http, url)
        await asyncio.to_thread(idempotency_runs, url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def own_transaction(url: str) -> None:
    """The library's statement on raw asyncpg vs ``allocate`` and ``IdGeneratorUtil``."""
    print("PostgreSQL: allocation of one ID, own transaction (IDs/s)")
    sql, order = library_statement("asyncpg")
    args = positional(order)
    for hot in (True, False):
        where = "hot prefix" if hot else "100 prefixes"
        for clients in CLIENTS:
            names = names_of(hot)
            await asyncio.to_thread(create_sequences, url, names)
            async with raw_pool(url, clients) as pool, engine_of(url, clients) as engine:
                use_cases = use_cases_of(engine)

                async def raw(p: str, pool: asyncpg.Pool = pool) -> object:
                    async with pool.acquire() as conn:
                        return await conn.fetchrow(sql, *args(p))

                async def util(p: str, engine: AsyncEngine = engine) -> object:
                    return await IdGeneratorUtil.generate_id(p, engine)

                measured = await alternated(clients, [raw, use_cases.allocate, util], names)
            base = record(
                "pg",
                f"raw asyncpg, the library's statement, {where}, {clients} clients",
                measured[0],
                "IDs/s",
                series=f"raw asyncpg, {where}",
                clients=clients,
            )
            record(
                "pg",
                f"library, own transaction, {where}, {clients} clients",
                measured[1],
                "IDs/s",
                base,
                series=f"library, own transaction, {where}",
                clients=clients,
            )
            record(
                "pg",
                f"IdGeneratorUtil.generate_id(p, engine), {where}, {clients} clients",
                measured[2],
                "IDs/s",
                base,
            )


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

            bare, library = await alternated(clients, [bare_session, caller], names_of(True))
            base = record(
                "pg", f"bare SQLAlchemy session, same upsert, {clients} clients", bare, "IDs/s"
            )
            record("pg", f"library in caller's session, {clients} clients", library, "IDs/s", base)


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


def http(url: str) -> None:
    """uvicorn with 1 and 2 workers: own transaction vs the raw statement (measured in turns
    with it), the block cache vs the bare endpoint."""
    load = http_bench.generator()
    report.NOTES["http"] = (
        f"HTTP: {http_bench.server_stack()}, access log off, an API key checked per request, "
        "workers started by `idmanager.api.serving.run` (TCP_NODELAY in every worker); "
        f"load generator: {load}, keep-alive, POST, one connection per client (with 2 "
        "workers, in two batches 0.25 s apart: a single burst of connections all lands on "
        "the first worker to wake). The own transaction's raw baseline is measured in turns "
        f"with it ({ROUNDS} rounds each, medians). CPU in the notes: cores used during the run "
        "(1.00 = one core busy); postgres counts every backend on the machine."
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
                    name = f"HTTP IdManager, {mode}, hot prefix, {label}, {n} clients"
                    series = f"HTTP IdManager, {mode}, {label}"
                    path = f"/api/v1/prefixes/{hot}/ids"
                    # The targets: the block cache vs the bare endpoint of the same server,
                    # the own transaction vs the database's statement rate.
                    if cache:
                        measure_http(server, path, n, name, base=bare[n], series=series)
                    else:
                        beside_raw(url, server, path, n, label, series)
    # What `uvicorn --workers 2` (and `idmanager serve --workers 2` through it) gives as is.
    with http_bench.Server(url, workers=2, block_cache=False, stock=True) as server:
        measure_http(
            server,
            "/bare/HOT/ids",
            32,
            "HTTP bare endpoint, 2 workers by plain uvicorn.run (uvicorn #3149), 32 clients",
            base=last_bare[32],
        )


def beside_raw(
    url: str, server: http_bench.Server, path: str, clients: int, label: str, series: str
) -> None:
    """Measure the route at ``path`` and the raw statement on a hot prefix in turns, ROUNDS
    times each: the database's rate drifts with the machine within minutes."""
    sql, order = library_statement("asyncpg")
    args = positional(order)
    names = names_of(hot=True)
    create_sequences(url, names)

    async def raw_rate() -> float:
        async with raw_pool(url, clients) as pool:

            async def raw(p: str) -> object:
                async with pool.acquire() as conn:
                    return await conn.fetchrow(sql, *args(p))

            return await rate(clients, raw, True, SECONDS / ROUNDS, names, 0.1)

    server.drive(path, clients, 1)  # warm up: connections, the prefix's row
    raws: list[float] = []
    loads: list[http_bench.Load] = []
    for r in range(ROUNDS):
        pair = [
            lambda: raws.append(asyncio.run(raw_rate())),
            lambda: loads.append(server.drive(path, clients, SECONDS / ROUNDS)),
        ]
        for run in pair if r % 2 == 0 else pair[::-1]:
            run()
    load = sorted(loads, key=lambda found: found.rate)[len(loads) // 2]
    name = f"HTTP IdManager, own transaction, hot prefix, {label}, {clients} clients"
    base = record(
        "http",
        f"raw asyncpg, the library's statement, hot prefix, {clients} clients (in turns with "
        f"HTTP, {label})",
        statistics.median(raws),
        "IDs/s",
    )
    errors = sum(found.errors for found in loads)
    _record_http(name, load, errors, base, series, clients)


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
    return _record_http(name, load, load.errors, base, series, clients if series else None)


def _record_http(
    name: str,
    load: http_bench.Load,
    errors: int,
    base: report.Row | None,
    series: str,
    clients: int | None,
) -> report.Row:
    if errors:
        print(f"  ({errors} failed requests in '{name}')")
    note = load.note(http_bench.generator().split()[0])
    return record("http", name, load.rate, "IDs/s", base, note=note, series=series, clients=clients)


# journal_mode and synchronous: the library's settings first, then two of more durability.
DURABILITY = (("WAL", "NORMAL"), ("WAL", "FULL"), ("DELETE", "FULL"))


def _sqlite_rate(one: Callable[[str], object], names: list[str], seconds: float) -> float:
    p, done = names[0], 0
    stop = time.perf_counter() + 0.1
    while time.perf_counter() < stop:
        one(p)
    start, stop = time.perf_counter(), time.perf_counter() + seconds
    while time.perf_counter() < stop:
        one(p)
        done += 1
    return done / (time.perf_counter() - start)


def _with_settings(engine: Any, journal: str, synchronous: str) -> None:
    """Open the engine's connections with other settings (after the library's own hook)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _settings(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA journal_mode = {journal}")
        dbapi_connection.execute(f"PRAGMA synchronous = {synchronous}")


def sqlite_runs() -> None:
    """One client, one ID per committed statement: raw sqlite3 vs the library, at the same
    journal and synchronous settings, the library's first."""
    folder = tempfile.mkdtemp()
    path = Path(folder) / "bench.db"
    url = f"sqlite:///{path}"
    migrate(url)
    print("SQLite: one client, one ID per committed statement (IDs/s)")
    for journal, synchronous in DURABILITY:
        _sqlite_at(url, path, journal, synchronous)
    asyncio.run(_aiosqlite_run(url))


def _sqlite_at(url: str, path: Path, journal: str, synchronous: str) -> None:
    names = names_of(True)
    create_sequences(url, names)
    where = f"{journal}, synchronous {synchronous}"
    sql, order = library_statement("sqlite")
    args, upsert = positional(order), UPSERT.replace("$1", "?")
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    engine = create_engine(url)
    if (journal, synchronous) != DURABILITY[0]:
        _with_settings(engine, journal, synchronous)
    use_cases = use_cases_of(engine)
    try:
        measured = alternated_sync(
            [
                lambda p: conn.execute(sql, args(p)).fetchall(),
                lambda p: conn.execute(upsert, (p,)).fetchall(),
                use_cases.allocate,
                lambda p: IdGeneratorUtil.generate_id(p, engine),
            ],
            names,
        )
        base = record(
            "sqlite", f"raw sqlite3, the library's statement, {where}", measured[0], "IDs/s"
        )
        issue = record("sqlite", f"raw sqlite3, the issue's upsert, {where}", measured[1], "IDs/s")
        record("sqlite", f"library, own transaction (sync), {where}", measured[2], "IDs/s", issue)
        record(
            "sqlite",
            f"library, own transaction (sync), {where}, vs the library's statement",
            measured[2],
            "IDs/s",
            base,
            show=False,
        )
        record(
            "sqlite",
            f"IdGeneratorUtil.generate_id(p, engine), {where}",
            measured[3],
            "IDs/s",
            issue,
        )
        if (journal, synchronous) == DURABILITY[0]:
            start = time.perf_counter()
            use_cases.run(lambda s: s.bulk_generate_ids(prefix(), 1_000_000))
            record(
                "sqlite",
                "library bulk_generate_ids(1,000,000) (ms)",
                (time.perf_counter() - start) * 1000,
                "ms",
            )
    finally:
        conn.close()
        engine.dispose()


async def _aiosqlite_run(url: str) -> None:
    """The async engine on SQLite (aiosqlite, the service's default database)."""
    names = names_of(True)
    await asyncio.to_thread(create_sequences, url, names)
    engine = create_async_engine(url)
    try:
        use_cases = use_cases_of(engine)
        issue = report.find("raw sqlite3, the issue's upsert, WAL, synchronous NORMAL")
        record(
            "sqlite",
            "library, own transaction (aiosqlite), WAL, synchronous NORMAL",
            await rate(1, use_cases.allocate, names=names),
            "IDs/s",
            issue,
        )
    finally:
        await engine.dispose()


def orm_runs() -> None:
    """bench/orm.py: the ORM's number drawn at flush vs at commit, 32 business transactions;
    how long the sequence's row stays locked at commit."""
    try:
        import orm  # written beside this file; a failure there must not lose the rest

        figures, held = orm.main(PG, orm.SECONDS)  # rounds of a second: see orm.ROUNDS
    except Exception as exc:
        print(f"  bench/orm.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["orm"] = f"The ORM benchmark (bench/orm.py) failed: {type(exc).__name__}."
        return
    name = f"ORM, {figures.clients} transactions with {figures.work_ms:.0f} ms of work"
    start = record("orm", f"{name}, number drawn at flush", figures.at_start, "docs/s")
    record("orm", f"{name}, number drawn at commit", figures.at_commit, "docs/s", start)
    hand = record("orm", f"{name}, by hand on raw asyncpg, at commit", figures.by_hand, "docs/s")
    record("orm", f"{name}, number drawn at commit, vs by hand", figures.at_commit, "docs/s", hand)
    unnumbered = f"{name}, the same ORM transaction with no numbering, vs by hand"
    record("orm", unnumbered, figures.unnumbered, "docs/s", hand)
    cpu = f"{name}, CPU per transaction (µs)"
    by_hand_cpu = record("orm", f"{cpu}: by hand", figures.by_hand_cpu, "µs")
    record("orm", f"{cpu}: number drawn at commit", figures.at_commit_cpu, "µs", by_hand_cpu)
    record("orm", f"{cpu}: no numbering", figures.unnumbered_cpu, "µs", by_hand_cpu)
    record("orm", f"{cpu}: by hand, no numbering", figures.by_hand_unnumbered_cpu, "µs")
    # The numbering's own CPU, numbered minus unnumbered: IdManager's beside the hand-written.
    own = f"{cpu}: the numbering's own (numbered minus unnumbered)"
    own_by_hand = record("orm", f"{own}, by hand", figures.numbering_cpu_by_hand, "µs")
    record("orm", f"{own}, idmanager.orm", figures.numbering_cpu, "µs", own_by_hand)
    beside = record(
        "orm", f"{name}, by hand, in turns with the next", figures.by_hand_beside, "docs/s"
    )
    record(
        "orm",
        f"{name}, by hand as busy as the numbered ORM (+{figures.extra_cpu:,.0f} µs of CPU), "
        "vs by hand",
        figures.by_hand_as_busy,
        "docs/s",
        beside,
    )
    lock = "ORM at commit, the sequence's row locked (median, one at a time)"
    by_hand = record("orm", f"{lock}: by hand on asyncpg (ms)", held.by_hand_total, "ms")
    record("orm", f"{lock}: idmanager.orm (ms)", held.orm_total, "ms", by_hand)
    record(
        "orm", f"{lock}: the allocation statement, with the write (ms)", held.orm_allocation, "ms"
    )
    record("orm", f"{lock}: Python between it and the next statement (ms)", held.orm_between, "ms")
    record("orm", f"{lock}: Python calls between it and the next", held.orm_calls_between, "calls")
    record("orm", f"{lock}: a write of the numbers apart (ms)", held.orm_write, "ms")
    record("orm", f"{lock}: COMMIT (ms)", held.orm_commit, "ms")


def idempotency_runs(url: str) -> None:
    """bench/idempotency.py: an allocation with and without an Idempotency-Key."""
    try:
        import idempotency  # written beside this file; a failure there must not lose the rest

        idempotency.measure(url)
    except Exception as exc:
        print(f"  bench/idempotency.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["idempotency"] = (
            f"The Idempotency-Key benchmark (bench/idempotency.py) failed: {type(exc).__name__}."
        )


def scale_runs() -> None:
    """bench/scale.py: sequences in use, a table of a million, a bulk of ten million IDs, the
    block cache's memory."""
    try:
        import scale

        figures = scale.run(PG)
    except Exception as exc:
        print(f"  bench/scale.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["scale"] = (
            f"The scale benchmark (bench/scale.py) failed: {type(exc).__name__}."
        )
        return
    rows: dict[str, report.Row] = {}
    for f in figures:
        rows[f.name] = record("scale", f.name, f.value, f.unit, rows.get(f.base), show=False)


def cpu_runs() -> None:
    """bench/cpu.py, ladder.py, profiles.py: CPU per allocation, where it goes, top costs."""
    try:
        # Written beside this file; a failure there must not lose the rest.
        import cpu
        import ladder
        import profiles

        rows = asyncio.run(cpu.run(PG))
        ladders = _ladders()
        profiled = _profiles()
    except Exception as exc:
        print(f"  bench/cpu.py, ladder.py or profiles.py failed: {type(exc).__name__}: {exc}")
        report.NOTES["cpu"] = f"The CPU benchmarks failed: {type(exc).__name__}."
        return
    for where, path, cost, base in rows:
        row = record("cpu", f"{path.group}: {path.name}, {where}", cost.client_us, "µs", show=False)
        row.ratio = cost.client_us / base.client_us  # a cost multiple of the group's first
    report.SECTIONS.append(("CPU per allocation", [cpu.NOTE, "", *cpu.markdown(rows)]))
    report.SECTIONS.append(
        ("Where the CPU goes: one layer at a time", [ladder.NOTE, "", *ladder.markdown(ladders)])
    )
    report.SECTIONS.append(
        (
            "Top costs of each path (cProfile, CPU clock)",
            [profiles.NOTE, "", *profiles.markdown(profiled)],
        )
    )


def _profiles() -> list[Any]:
    import cpu
    import profiles

    env, _database, cleanup = cpu.fresh_databases(PG)
    try:
        return asyncio.run(profiles.profile_paths(profiles.chosen([]), env, seconds=1.0))
    finally:
        cleanup()


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
    if os.environ.get("IDMANAGER_BENCH_SCALE", "1") != "0":  # 0: skip the scale figures
        scale_runs()
    if os.environ.get("IDMANAGER_BENCH_CPU", "1") != "0":  # 0: skip the CPU benchmarks
        cpu_runs()
    report.write(time.perf_counter() - started)


if __name__ == "__main__":
    main()
