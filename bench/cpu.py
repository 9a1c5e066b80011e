"""CPU microseconds per allocation, for every path, beside the raw statement's, in one run.

Throughput on a shared 2-core machine says little about who spends what; CPU time does. For
each path (bench/cpu_paths.py) this measures, over a fixed stretch of back-to-back
allocations:

- the CPU of this process (``time.process_time``: every thread, so aiosqlite's worker and
  psycopg's threads count), per allocation;
- the CPU of the PostgreSQL backends serving it (``/proc/<pid>/schedstat``, nanoseconds,
  summed over the backends connected to the benchmark's database), per allocation.

Paths run in groups led by their baseline. Within a group they run in turns, ``ROUNDS``
times, and each figure is the median of its rounds: a burst of load from another process
then lands on one round, not on one path. Ratios are cost multiples of the group's baseline
(2.0x = twice the raw statement's CPU; lower is better).

``python bench/cpu.py`` prints the table; bench/run.py calls ``run`` for `make bench`.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path as FilePath

import psycopg
from cpu_paths import PATHS, Env, Op, Path
from internals import create_sequences

from idmanager import migrate

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_CPU_SECONDS", "0.4"))
ROUNDS = int(os.environ.get("IDMANAGER_BENCH_CPU_ROUNDS", "3"))
WARM_UP = 0.2
# With several clients, the own-transaction paths and HTTP: where many prefixes share the
# load, the process's CPU per allocation is what limits the throughput.
CONCURRENT = ("asyncpg", "psycopg", "http")
CONCURRENT_SKIP = ("issue's upsert",)
CLIENTS = 8


@dataclass(frozen=True)
class Cost:
    """One measured stretch: allocations done, and CPU per allocation (µs)."""

    ops: int
    client_us: float
    backend_us: float | None
    seconds: float
    calls: float | None = None  # Python function calls per allocation (deterministic)
    spread: float = 0.0  # (largest - smallest) / median of the rounds' client CPU

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


class BackendClock:
    """CPU time of the PostgreSQL backends connected to one database, from /proc.

    Only works when the server runs on this machine and its /proc is readable; otherwise
    ``read`` returns None and the backend column stays empty.
    """

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.database = database

    def read(self) -> dict[int, int] | None:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,),
        ).fetchall()
        used = {}
        for (pid,) in rows:
            try:
                # schedstat's first field: nanoseconds on a CPU (stat's ticks are 10 ms).
                used[pid] = int(FilePath(f"/proc/{pid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        return used

    @staticmethod
    def spent(before: dict[int, int] | None, after: dict[int, int] | None) -> float | None:
        """Return the nanoseconds spent between two readings (backends that came count)."""
        if before is None or after is None:
            return None
        return float(sum(ns - before.get(pid, 0) for pid, ns in after.items()))

    def close(self) -> None:
        self.admin.close()


def prefixes(hot: bool, env: Env | None = None) -> list[str]:
    """Return new prefixes (1, or 100); with ``env``, their sequences created on both
    databases: the library's statement only updates, as an allocation of an existing
    sequence does."""
    names = ["C" + uuid.uuid4().hex[:10].upper() for _ in range(1 if hot else 100)]
    if env is not None:
        create_sequences(env.pg_url, names)
        create_sequences(f"sqlite:///{env.sqlite_path}", names)
    return names


async def _loop(op: Op, names: list[str], clients: int, seconds: float) -> int:
    """Call ``op`` back to back for ``seconds`` from ``clients`` tasks; return the count."""
    stop = time.perf_counter() + seconds
    if not op.is_async:
        # Inline: sqlite3 connections belong to the thread that opened them.
        return _sync_loop(op, names, clients, stop)
    done = 0

    async def client(i: int) -> None:
        nonlocal done
        call, n = op.call, len(names)
        while time.perf_counter() < stop:
            await call(names[i % n])
            done += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


def _sync_loop(op: Op, names: list[str], clients: int, stop: float) -> int:
    """Run a sync ``op`` from ``clients`` threads (the first one being this thread)."""
    counts = [0] * clients

    def client(i: int) -> None:
        call, n, done = op.call, len(names), 0
        while time.perf_counter() < stop:
            call(names[(i + done * clients) % n])
            done += 1
        counts[i] = done

    others = [threading.Thread(target=client, args=(i,)) for i in range(1, clients)]
    for thread in others:
        thread.start()
    client(0)
    for thread in others:
        thread.join()
    return sum(counts)


async def count_calls(op: Op, names: list[str], n: int = 200) -> float:
    """Return the Python function calls per allocation: a count, so free of noise.

    cProfile counts calls made on this thread, so a sync path's worker threads are not
    counted (sync paths run their single client here); neither are aiosqlite's.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        for i in range(n):
            result = op.call(names[i % len(names)])
            if op.is_async:
                await result
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler)
    return float(stats.total_calls) / n


async def measure(
    op: Op, names: list[str], clients: int, clock: BackendClock | None, seconds: float
) -> Cost:
    """Measure ``op``'s CPU per allocation over ``seconds`` (after a short warm-up)."""
    await _loop(op, names, clients, WARM_UP)
    before = clock.read() if clock else None
    cpu, start = time.process_time(), time.perf_counter()
    done = await _loop(op, names, clients, seconds)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    spent = BackendClock.spent(before, clock.read()) if clock else None
    done = max(done, 1)
    backend = spent / done / 1000 if spent is not None else None
    return Cost(done, cpu / done * 1e6, backend, elapsed)


def _median(costs: list[Cost], calls: float | None) -> Cost:
    backends = [c.backend_us for c in costs if c.backend_us is not None]
    client = [c.client_us for c in costs]
    middle = statistics.median(client)
    return Cost(
        sum(c.ops for c in costs),
        middle,
        statistics.median(backends) if backends else None,
        sum(c.seconds for c in costs),
        calls,
        (max(client) - min(client)) / middle if middle else 0.0,
    )


async def measure_group(
    paths: list[Path],
    env: Env,
    clock: BackendClock | None,
    *,
    hot: bool = True,
    seconds: float = SECONDS,
    rounds: int = ROUNDS,
    calls: bool = True,
) -> list[tuple[Path, Cost]]:
    """Set up every path of a group, then measure them in turns; return the medians."""
    names = prefixes(hot, env)
    async with AsyncExitStack() as stack:
        ops = [await stack.enter_async_context(path.setup(env)) for path in paths]
        runs: list[list[Cost]] = [[] for _ in paths]
        for r in range(rounds):
            # Alternate the order, so no path always runs right after the same other one.
            order = range(len(paths)) if r % 2 == 0 else reversed(range(len(paths)))
            for i in order:
                path_clock = clock if paths[i].pg else None
                runs[i].append(await measure(ops[i], names, env.clients, path_clock, seconds))
        counted = [await count_calls(op, names) if calls else None for op in ops]
    return [(path, _median(costs, n)) for path, costs, n in zip(paths, runs, counted, strict=True)]


Row = tuple[str, Path, Cost, Cost]  # (configuration, path, cost, the group's baseline cost)


async def measure_all(
    env: Env, clock: BackendClock | None, show: Callable[[Row], None]
) -> list[Row]:
    """Every group at one client on a hot prefix, then the concurrent configurations."""
    rows: list[Row] = []
    groups: dict[str, list[Path]] = {}
    for path in PATHS:
        groups.setdefault(path.group, []).append(path)
    for group, paths in groups.items():
        print(f"CPU per allocation: {group}, 1 client, hot prefix", flush=True)
        measured = await measure_group(paths, env, clock)
        for path, cost in measured:
            rows.append(("1 client, hot prefix", path, cost, measured[0][1]))
            show(rows[-1])
    for group in CONCURRENT:
        paths = [p for p in groups[group] if not any(s in p.name for s in CONCURRENT_SKIP)]
        where = f"{CLIENTS} clients, 100 prefixes"
        print(f"CPU per allocation: {group}, {where}", flush=True)
        busy = Env(env.pg_url, env.sqlite_path, CLIENTS)
        measured = await measure_group(paths, busy, clock, hot=False, calls=False)
        for path, cost in measured:
            rows.append((where, path, cost, measured[0][1]))
            show(rows[-1])
    return rows


def describe(row: Row) -> str:
    _where, path, cost, base = row
    backend = f"{cost.backend_us:7.1f}" if cost.backend_us is not None else "      -"
    ratio = cost.client_us / base.client_us
    calls = f"{cost.calls:6.0f}" if cost.calls is not None else "     -"
    return (
        f"  {path.group:<8} {path.name:<62} {cost.client_us:7.1f} µs ±{cost.spread:4.0%} "
        f"{ratio:5.2f}x  backend {backend} µs  {calls} calls  {cost.rate:7,.0f}/s"
    )


def print_row(row: Row) -> None:
    print(describe(row), flush=True)


def markdown(rows: list[Row]) -> list[str]:
    """Return the rows as a markdown table, one line per path and configuration."""
    lines = [
        "| configuration | path | CPU µs/ID, this process | x baseline | PostgreSQL backend "
        "µs/ID | Python calls/ID | IDs/s (1 client: latency-bound) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for where, path, cost, base in rows:
        lead = path is next(r[1] for r in rows if r[0] == where and r[1].group == path.group)
        name = f"**{path.name}** (baseline)" if lead else path.name
        backend = f"{cost.backend_us:,.0f}" if cost.backend_us is not None else "in process"
        calls = f"{cost.calls:,.0f}" if cost.calls is not None else ""
        lines.append(
            f"| {where} | {path.group}: {name} | {cost.client_us:,.0f} ±{cost.spread:.0%} | "
            f"{cost.client_us / base.client_us:.2f}x | {backend} | {calls} | {cost.rate:,.0f} |"
        )
    return lines


NOTE = (
    "CPU per allocation: `time.process_time` of the benchmark process (all its threads) over "
    "back-to-back allocations, and the PostgreSQL backends' CPU from /proc/<pid>/schedstat. "
    "Paths run in turns within their group; each figure is the median of the rounds (± the "
    "spread of the rounds). 'x baseline' is a cost multiple of the group's first path: lower "
    "is better. At 1 client every allocation waits for its commit, so each figure includes "
    "one sleep and wake-up of the process (tens of µs on a VM); at 8 clients the loop seldom "
    "sleeps and the figures are the code's own. 'Python calls/ID' is cProfile's count of "
    "function calls per allocation on the calling thread: a count, free of noise."
)


def fresh_databases(pg: str = PG) -> tuple[Env, str, Callable[[], None]]:
    """Create and migrate a PostgreSQL database and a SQLite file; return them and a cleanup."""
    name = "idm_bench_cpu_" + uuid.uuid4().hex[:8]
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    folder = tempfile.mkdtemp(prefix="idm_bench_cpu_")
    sqlite_path = str(FilePath(folder) / "bench.db")
    env = Env(f"{pg}/{name}", sqlite_path)

    def cleanup() -> None:
        with psycopg.connect(f"{pg}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for file in FilePath(folder).iterdir():
            file.unlink()
        FilePath(folder).rmdir()

    try:
        migrate(env.pg_url)
        migrate(f"sqlite:///{sqlite_path}")
    except BaseException:
        cleanup()
        raise
    return env, name, cleanup


def clock_for(pg: str, database: str) -> BackendClock | None:
    clock = BackendClock(f"{pg}/postgres", database)
    if clock.read() is None:
        print("  (PostgreSQL backends' /proc not readable: backend CPU not measured)")
        clock.close()
        return None
    return clock


async def run(pg: str = PG, show: Callable[[Row], None] = print_row) -> list[Row]:
    """Measure every path on fresh databases (dropped afterwards); return the rows."""
    env, name, cleanup = fresh_databases(pg)
    clock = clock_for(pg, name)
    try:
        return await measure_all(env, clock, show)
    finally:
        if clock is not None:
            clock.close()
        cleanup()


if __name__ == "__main__":
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    asyncio.run(run())
