"""Scale: how an allocation's cost grows with the number of sequences and the table's size,
a bulk of 10,000,000 IDs, and the block cache's memory with 10,000 hot prefixes.

- **Sequences in use**: 8 tasks allocate round-robin over 1, 100 and 10,000 sequences of a
  small table (CPU of this process per ID, and IDs/s). One sequence is one hot row: each
  allocation waits for the previous commit. 100 and 10,000 spread the load.
- **Table size**: the same allocations over 10,000 sequences picked at random from a table of
  1,000,000 (made with one ``INSERT … SELECT generate_series``), beside a table of 10,000. The
  allocation is a primary-key lookup (the unique index on ``(scope, prefix)``): it must not
  slow as the table grows. Beside it, in the same turns, the raw statement (the issue's
  smallest upsert on bare asyncpg, as many tasks) on both tables: what PostgreSQL's own
  lookup costs more in the bigger table (a deeper index, pages that no longer fit the
  caches).
- **Bulk**: ``generate_range(p, 10,000,000)``: one statement, then the IDs formatted a letter
  block at a time, as the HTTP service streams them (a list of 10 million strings would take
  about a gigabyte; the IDs are formatted, counted and dropped).
- **Block cache memory**: a ``BlockCache`` holding 10,000 prefixes at once (each with its
  reserved block), measured with tracemalloc.

``python bench/scale.py`` (a fresh PostgreSQL database on IDMANAGER_BENCH_PG, dropped after);
bench/run.py calls ``run`` and records the rows.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from internals import MINIMAL, raw_pool, tasks_rate, timed_rate

from idmanager import BlockCache, ServiceOptions, connect, create_async_engine, migrate

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_SCALE_SECONDS", "2"))
TASKS = 8
BIG_TABLE = 1_000_000
BULK = 10_000_000
HOT_PREFIXES = 10_000


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    base: str = ""  # the name of the figure this one compares with


async def _admin(server: str, sql: str) -> None:
    connection = await asyncpg.connect(server + "/postgres")
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _fill(url: str, stem: str, rows: int) -> list[str]:
    """Insert ``rows`` sequences named ``stem`` + a number (one statement); return the names."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO id_managers (scope, prefix, last_value, is_active, separator, "
            "letter_width, digit_width) SELECT '', $1 || n, 1, true, '-', 3, 4 "
            "FROM generate_series(1, $2::bigint) AS n",
            stem,
            rows,
        )
        # As a table in use is: row versions pruned, visibility known, statistics fresh.
        await connection.execute("VACUUM (ANALYZE) id_managers")
    finally:
        await connection.close()
    return [f"{stem}{n}" for n in range(1, rows + 1)]


async def allocations(url: str, names: list[str], seconds: float = SECONDS) -> tuple[float, float]:
    """Allocate from ``names`` (random order) with TASKS tasks: (IDs/s, CPU µs per ID)."""
    engine = create_async_engine(url, pool_size=TASKS, max_overflow=0)
    use_cases = connect(engine)
    try:
        return await _warmed(lambda: use_cases.allocate(_pick(names)), seconds)
    finally:
        await engine.dispose()


async def raw_allocations(
    url: str, names: list[str], seconds: float = SECONDS
) -> tuple[float, float]:
    """As :func:`allocations`, with the raw statement on bare asyncpg: (IDs/s, CPU µs per ID)."""
    async with raw_pool(url, TASKS) as pool:

        async def one() -> None:
            async with pool.acquire() as connection:
                await connection.fetchval(MINIMAL, _pick(names))

        return await _warmed(one, seconds)


def _pick(names: list[str]) -> str:
    return names[0] if len(names) == 1 else random.choice(names)


async def _warmed(one: Callable[[], Awaitable[object]], seconds: float) -> tuple[float, float]:
    """TASKS tasks calling ``one``: 0.3 s to warm up, then ``seconds`` timed."""
    await tasks_rate(TASKS, 0.3, one)
    return await timed_rate(TASKS, seconds, one)


async def _touch(url: str, names: list[str]) -> None:
    """Allocate one ID of each of ``names`` (TASKS tasks)."""
    engine = create_async_engine(url, pool_size=TASKS, max_overflow=0)
    use_cases = connect(engine)

    async def task(part: list[str]) -> None:
        for name in part:
            await use_cases.allocate(name)

    try:
        await asyncio.gather(*(task(names[i::TASKS]) for i in range(TASKS)))
    finally:
        await engine.dispose()


async def bulk(url: str) -> list[Figure]:
    """One allocation of 10,000,000 IDs, then every ID formatted, a letter block at a time."""
    engine = create_async_engine(url, pool_size=1)
    use_cases = connect(engine, ServiceOptions(max_count=BULK))
    prefix = "BULK" + uuid.uuid4().hex[:6].upper()
    try:
        began = time.perf_counter()
        ids = await use_cases.allocate(prefix, BULK)
        allocated = time.perf_counter() - began
        formatted = sum(len(chunk) for chunk in ids.chunks())
        total = time.perf_counter() - began
    finally:
        await engine.dispose()
    assert formatted == BULK
    return [
        Figure("bulk of 10,000,000 IDs: the allocation (one statement)", allocated * 1000, "ms"),
        Figure("bulk of 10,000,000 IDs: allocated and every ID formatted", total * 1000, "ms"),
        Figure(
            "bulk of 10,000,000 IDs: IDs formatted per second", BULK / (total - allocated), "IDs/s"
        ),
    ]


async def block_cache_memory(url: str, prefixes: int = HOT_PREFIXES) -> list[Figure]:
    """A block cache holding ``prefixes`` prefixes at once (each with its block reserved)."""
    engine = create_async_engine(url, pool_size=4)
    use_cases = connect(engine)
    names = [f"HOT{n}" for n in range(prefixes)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    cache = BlockCache(use_cases.run, max_prefixes=prefixes)
    try:
        for name in names:
            await cache.generate_id(name)
        gc.collect()
        after = tracemalloc.take_snapshot()
        held = sum(s.size_diff for s in after.compare_to(before, "filename"))
        stats = cache.stats
    finally:
        tracemalloc.stop()
        await cache.close()
        await engine.dispose()
    return [
        Figure(f"block cache holding {prefixes:,} hot prefixes: memory", held / 2**20, "MiB"),
        Figure("block cache: memory per hot prefix", held / prefixes, "bytes"),
        Figure("block cache: blocks fetched to hold them", stats.blocks_fetched, "blocks"),
    ]


async def measure(server: str = PG) -> list[Figure]:
    """Every scale figure, on fresh databases of ``server`` (dropped afterwards)."""
    out: list[Figure] = []
    databases = ["idm_bench_scale_" + uuid.uuid4().hex[:8] for _ in range(2)]
    for name in databases:
        await _admin(server, f'CREATE DATABASE "{name}"')
    try:
        for name in databases:
            await asyncio.to_thread(migrate, f"{server}/{name}")
        small_url, big_url = (f"{server}/{name}" for name in databases)
        print(f"Scale: allocation by sequences in use, {TASKS} tasks (IDs/s, CPU µs/ID)")
        in_small = await _fill(small_url, "S", 10_000)
        one = ""  # the CPU with one sequence in use: the others compare with it
        for n in (1, 100, 10_000):
            rate, cpu = await allocations(small_url, in_small[:n])
            label = f"scale: {n:,} sequences in use, table of 10,000"
            out += [
                Figure(f"{label}, IDs/s", rate, "IDs/s"),
                Figure(f"{label}, CPU", cpu, "µs", one),
            ]
            one = one or out[-1].name
            print(f"  {n:>6,} sequences  {rate:>8,.0f} IDs/s  {cpu:6.1f} µs CPU/ID", flush=True)
        print(f"Scale: a table of {BIG_TABLE:,} sequences, against one of 10,000 (in turns)")
        in_big = await _fill(big_url, "B", BIG_TABLE)
        chosen = random.sample(in_big, 10_000)
        # Each sequence once first, as those of the small table were: a row's first update
        # after a bulk load finds its page full (no room for a HOT update) on any table.
        await _touch(big_url, chosen)
        # The library and the raw statement, each on both tables, in turns.
        modes = [(m, t) for m in ("library", "raw") for t in ("small", "big")]
        rounds: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in modes}
        for r in range(3):
            for mode, which in modes if r % 2 == 0 else modes[::-1]:
                url, names = (small_url, in_small) if which == "small" else (big_url, chosen)
                measured = allocations if mode == "library" else raw_allocations
                rounds[mode, which].append(await measured(url, names))
        median = {
            k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
            for k, v in rounds.items()
        }
        for mode, stem in (("library", "scale: "), ("raw", "scale: raw statement, ")):
            small = f"{stem}10,000 sequences in use, table of 10,000 (in turns with 1,000,000)"
            label = f"{stem}10,000 sequences in use, table of {BIG_TABLE:,}"
            (small_rate, small_cpu), (rate, cpu) = median[mode, "small"], median[mode, "big"]
            out += [
                Figure(f"{small}, IDs/s", small_rate, "IDs/s"),
                Figure(f"{small}, CPU", small_cpu, "µs"),
                Figure(f"{label}, IDs/s", rate, "IDs/s", f"{small}, IDs/s"),
                Figure(f"{label}, CPU", cpu, "µs", f"{small}, CPU"),
            ]
            print(
                f"  {mode + ',':<9}table of 10,000: {small_rate:,.0f} IDs/s, {small_cpu:.1f} µs "
                f"CPU/ID; of {BIG_TABLE:,}: {rate:,.0f} IDs/s, {cpu:.1f} µs CPU/ID "
                f"({rate / small_rate:.2f}x)",
                flush=True,
            )
        print("Scale: a bulk of 10,000,000 IDs; the block cache's memory")
        out += await bulk(small_url)
        out += await block_cache_memory(small_url)
        for figure in out[-6:]:
            print(f"  {figure.name:<62} {figure.value:>14,.1f} {figure.unit}", flush=True)
    finally:
        for name in databases:
            await _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return out


def run(server: str = PG) -> list[Figure]:
    return asyncio.run(measure(server))


if __name__ == "__main__":
    run()
