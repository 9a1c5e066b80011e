"""`make bench`: IdManager against the raw database statement, measured in the same run.

Prints a table of absolute figures and ratios to a baseline and writes docs/benchmarks.md.
Databases: a fresh PostgreSQL database on IDMANAGER_BENCH_PG (default 127.0.0.1:5432) and a
temporary SQLite file. Each figure is the best of a few short runs, not a timed test.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from idmanager import (
    IdGeneratorUtil,
    IdManagerUseCases,
    SyncIdManagerUseCases,
    create_async_engine,
    create_engine,
    format_id,
    migrate,
)

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_SECONDS", "3"))
UPSERT = (
    "INSERT INTO id_managers (scope, prefix, last_value) VALUES ('', $1, 1) "
    "ON CONFLICT (scope, prefix) DO UPDATE SET last_value = id_managers.last_value + 1 "
    "RETURNING last_value"
)
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None


ROWS: list[Row] = []


def record(section: str, name: str, value: float, unit: str, base: Row | None = None) -> Row:
    row = Row(section, name, value, unit)
    if base is not None:
        row.baseline, row.ratio = base.name, value / base.value
    ROWS.append(row)
    ratio = f"{row.ratio:6.2f}x {row.baseline}" if row.ratio is not None else ""
    print(f"  {name:<58} {value:>12,.0f} {unit:<7} {ratio}", flush=True)
    return row


def prefix() -> str:
    return "B" + uuid.uuid4().hex[:10].upper()


async def rate(clients: int, one: Callable[[str], Awaitable[object]], hot: bool) -> float:
    """Return operations per second of ``clients`` tasks looping for SECONDS."""
    prefixes = [prefix() for _ in range(1 if hot else 100)]
    done = 0
    stop = time.perf_counter() + SECONDS

    async def client(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(prefixes[i % len(prefixes)])
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - start)


async def postgres() -> None:
    name = "idm_bench_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(PG + "/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG}/{name}"
    try:
        migrate(url)
        await postgres_runs(url)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def postgres_runs(url: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=32, max_size=32)
    engine = create_async_engine(url, pool_size=32, max_overflow=0)
    use_cases = IdManagerUseCases(engine)

    async def raw(p: str) -> object:
        async with pool.acquire() as conn:
            return await conn.fetchval(UPSERT, p)

    async def own(p: str) -> object:
        return await use_cases.allocate(p)

    async def bare_session(p: str) -> object:
        async with AsyncSession(engine) as session:
            result = (await session.execute(text(UPSERT.replace("$1", ":p")), {"p": p})).scalar()
            await session.commit()
            return result

    async def caller(p: str) -> object:
        async with AsyncSession(engine) as session:
            result = await IdGeneratorUtil.generate_id(p, session)
            await session.commit()
            return result

    print("PostgreSQL: allocation of one ID, own transaction (IDs/s)")
    for hot in (True, False):
        where = "hot prefix" if hot else "100 prefixes"
        for clients in (1, 8, 32):
            base = record(
                "pg",
                f"raw asyncpg autocommit upsert, {where}, {clients} clients",
                await rate(clients, raw, hot),
                "IDs/s",
            )
            record(
                "pg",
                f"library, own transaction, {where}, {clients} clients",
                await rate(clients, own, hot),
                "IDs/s",
                base,
            )
    print("PostgreSQL: caller's transaction, a session per ID committed by the caller (IDs/s)")
    for clients in (1, 32):
        base = record(
            "pg",
            f"bare SQLAlchemy session, same upsert, {clients} clients",
            await rate(clients, bare_session, True),
            "IDs/s",
        )
        record(
            "pg",
            f"library in caller's session, {clients} clients",
            await rate(clients, caller, True),
            "IDs/s",
            base,
        )
    print("PostgreSQL: bulk of 1,000,000 IDs in one call")
    best = min(
        await timed(lambda: use_cases.run(lambda s: s.bulk_generate_ids(prefix(), 1_000_000)))
    )
    naive_start = time.perf_counter()
    p = prefix()
    [format_id(p, n) for n in range(1, 1_000_001)]
    naive = time.perf_counter() - naive_start
    base = record("pg", "naive per-ID formatting of 1,000,000 IDs (ms)", naive * 1000, "ms")
    record("pg", "library bulk_generate_ids(1,000,000) (ms)", best * 1000, "ms", base)
    await pool.close()
    await engine.dispose()


async def timed(call: Callable[[], Awaitable[object]], runs: int = 3) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


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
    use_cases = SyncIdManagerUseCases(create_engine(f"sqlite:///{path}"))
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


def write_report() -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {platform.node()} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), {when}.",
        "Each ratio compares with a baseline measured in the same run.",
        "",
        "| backend | measurement | value | unit | ratio | baseline |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for row in ROWS:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        cells = [row.section, row.name, f"{row.value:,.0f}", row.unit, ratio, row.baseline]
        lines.append("| " + " | ".join(cells) + " |")
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    asyncio.run(postgres())
    sqlite_runs()
    write_report()


if __name__ == "__main__":
    main()
