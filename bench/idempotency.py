"""What an Idempotency-Key costs: allocation with and without a key, measured in the same run.

Two pairs, each measured in alternating rounds (without, with, without, with, ...) so that a
machine busy with other work slows both alike:

- HTTP, own transaction, PostgreSQL, one uvicorn worker: ``POST /api/v1/prefixes/{p}/ids``
  without the header, and with a new ``Idempotency-Key`` on every request (each one a first
  request: the answer is stored, in the allocation's statement);
- the library: ``IdManagerUseCases.allocate`` against ``allocate_once`` with a new key each;
  beside it, the two statements the library runs, on raw asyncpg: what a key costs the
  database itself, which the library's ratio approaches as its own work per call shrinks.

The figure is the cost ratio: the time of a keyed allocation over an unkeyed one (throughput
without ÷ throughput with). The goal is 1.3 at most.

From ``bench/run.py``: ``idempotency.measure(url)`` on a migrated PostgreSQL database,
outside an event loop (from ``async def postgres()``: ``await asyncio.to_thread(
idempotency.measure, url)``); it records its rows through ``report.record`` (section
``idempotency``) and returns the pairs.
Alone: ``python bench/idempotency.py`` makes a database on ``IDMANAGER_BENCH_PG`` and drops
it afterwards. The load generator is wrk, as for the other HTTP figures, each request built by
its script (a new key each when keyed); without wrk, this file again (``--load``), in a
process of its own: raw asyncio streams, one prebuilt request per connection with only the
key changing. Python, it takes a share of the two cores the server and PostgreSQL need.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from internals import tasks_rate

BENCH = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("IDMANAGER_BENCH_SECONDS", "3"))
ROUNDS = 3  # alternating rounds per pair, SECONDS / ROUNDS each
GOAL = 1.3
HTTP_CLIENTS = (1, 32)
LIBRARY_TASKS = (1, 8)
# The database's own cost of a key, beside the library's (1, 8) and HTTP's 32 clients.
RAW_TASKS = (1, 8, 32)
HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Pair:
    """One comparison: IDs per second without and with a key, measured in the same rounds."""

    name: str
    without: float
    keyed: float

    @property
    def cost(self) -> float:
        """How many times longer a keyed allocation takes (throughput without ÷ with)."""
        return self.without / self.keyed


def prefix() -> str:
    return "BI" + uuid.uuid4().hex[:10].upper()


async def _alternate(
    rate: Callable[[bool, float], Awaitable[float]], seconds: float = SECONDS
) -> tuple[float, float]:
    """Run ``rate(keyed, seconds)`` in alternating rounds, which goes first reversed every
    other round; return the median rates."""
    await rate(False, 0.5)  # warm up: connections, plans, the prefix's row
    await rate(True, 0.5)
    found: dict[bool, list[float]] = {False: [], True: []}
    for r in range(ROUNDS):
        for keyed in (False, True) if r % 2 == 0 else (True, False):
            found[keyed].append(await rate(keyed, seconds / ROUNDS))
    return statistics.median(found[False]), statistics.median(found[True])


# -- the library ----------------------------------------------------------------------------------


async def library(url: str, tasks: int) -> Pair:
    """``allocate`` vs ``allocate_once`` (a new key per call), ``tasks`` tasks, hot prefix."""
    import idmanager
    from idmanager.domain.repository import Claim

    engine = idmanager.create_async_engine(url, pool_size=tasks, max_overflow=0)
    use_cases = idmanager.connect(engine)
    hot = prefix()
    await use_cases.allocate(hot)

    async def one(keyed: bool) -> None:
        if keyed:
            await use_cases.allocate_once(hot, 1, Claim("bench", uuid.uuid4().hex, "f"))
        else:
            await use_cases.allocate(hot)

    async def rate(keyed: bool, seconds: float) -> float:
        return await tasks_rate(tasks, seconds, lambda: one(keyed))

    try:
        without, keyed = await _alternate(rate)
    finally:
        await engine.dispose()
    return Pair(f"library, own transaction, hot prefix, {tasks} tasks", without, keyed)


async def raw(url: str, tasks: int) -> Pair | None:
    """The library's two statements on raw asyncpg, unkeyed and keyed (a new key each): what
    a key costs the database itself, the most the library's ratio can approach."""
    from internals import create_sequences, keyed_statement, library_statement, positional, raw_pool

    keyed_sql = keyed_statement()
    if keyed_sql is None:
        return None
    sql, args = keyed_sql
    unkeyed_sql, order = library_statement("asyncpg")
    unkeyed_args = positional(order)
    hot = prefix()
    await asyncio.to_thread(create_sequences, url, [hot])
    # Without the reset query asyncpg sends on release: one round trip per ID.
    async with raw_pool(url, tasks) as pool:

        async def one(keyed: bool) -> None:
            async with pool.acquire() as connection:
                if keyed:
                    await connection.fetchrow(sql, *args(hot, uuid.uuid4().hex))
                else:
                    await connection.fetchrow(unkeyed_sql, *unkeyed_args(hot))

        async def rate(keyed: bool, seconds: float) -> float:
            return await tasks_rate(tasks, seconds, lambda: one(keyed))

        without, keyed = await _alternate(rate)
    return Pair(f"raw asyncpg, the library's statements, hot prefix, {tasks} tasks", without, keyed)


# -- HTTP -----------------------------------------------------------------------------------------


def http(url: str, clients: tuple[int, ...] = HTTP_CLIENTS) -> list[Pair]:
    """One uvicorn worker on ``url``; each client count measured without and with keys."""
    import http_bench

    pairs = []
    with http_bench.Server(url, workers=1, block_cache=False) as server:
        for n in clients:
            path = f"{server.url}/api/v1/prefixes/{prefix()}/ids"

            async def rate(keyed: bool, seconds: float, path: str = path, n: int = n) -> float:
                return await asyncio.to_thread(drive, path, n, seconds, keyed, http_bench.KEY)

            without, keyed = asyncio.run(_alternate(rate))
            name = f"HTTP, own transaction, hot prefix, 1 worker, {n} clients"
            pairs.append(Pair(name, without, keyed))
    return pairs


# wrk's script: every request built by ``request()``, with a key of its own when keyed (a
# stem new to the database, then a count), so that both sides of a pair pay the same.
WRK_SCRIPT = """wrk.method = "POST"
local n = 0
request = function()
  n = n + 1
  if KEYED then wrk.headers["Idempotency-Key"] = "STEM-" .. n end
  return wrk.format()
end
"""


def drive(url: str, connections: int, seconds: float, keyed: bool, api_key: str) -> float:
    """Drive ``url`` with wrk, else with the load generator (this file, ``--load``) in its own
    process; return requests/s."""
    import http_bench

    if shutil.which("wrk"):
        lua = WRK_SCRIPT.replace("KEYED", str(keyed).lower()).replace("STEM", uuid.uuid4().hex)
        with tempfile.TemporaryDirectory() as folder:
            started = http_bench._start(Path(folder), 0, url, connections, seconds, lua, api_key)
            rate, errors, _cpu = http_bench._finish(*started)
        if errors:
            print(f"  ({errors} failed requests)", flush=True)
        return rate
    command = [sys.executable, __file__, "--load", url, str(connections), str(seconds)]
    command += ["keyed" if keyed else "plain", api_key]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  ({result['errors']} failed requests)", flush=True)
    return float(result["requests"]) / float(result["seconds"])


async def _connection(
    host: str, port: int, head: bytes, keyed: bool, stop: float, out: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    stem = uuid.uuid4().hex
    n = 0
    try:
        while time.perf_counter() < stop:
            n += 1
            key = f"{HEADER}: {stem}-{n}\r\n".encode() if keyed else b""
            writer.write(head + key + b"\r\n")
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out[0 if status.split(b" ", 2)[1] == b"201" else 1] += 1
    finally:
        writer.close()


async def _load(url: str, connections: int, seconds: float, keyed: bool, api_key: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Length: 0",
        f"Authorization: Bearer {api_key}",
    ]
    head = ("\r\n".join(lines) + "\r\n").encode()
    out = [0, 0]
    began = time.perf_counter()
    stop = began + seconds
    await asyncio.gather(
        *(_connection(host, port, head, keyed, stop, out) for _ in range(connections))
    )
    elapsed = time.perf_counter() - began
    print(json.dumps({"requests": out[0], "seconds": elapsed, "errors": out[1]}))


# -- the whole measurement ------------------------------------------------------------------------


def measure(url: str) -> list[Pair]:
    """Measure every pair on the migrated PostgreSQL database ``url``; record and print them.

    Each pair becomes two rows of ``report`` (section ``idempotency``, unit IDs/s): the
    figure without a key, and the one with a key whose ratio to it is the keyed throughput
    as a fraction of the unkeyed; the cost ratio (the goal's figure) is its inverse, printed
    and kept in the row's note.
    """
    import report

    print("Idempotency-Key: allocation without and with a key, PostgreSQL (IDs/s)", flush=True)
    pairs = []
    for tasks in RAW_TASKS:
        if tasks in LIBRARY_TASKS:
            pairs.append(asyncio.run(library(url, tasks)))
        found = asyncio.run(raw(url, tasks))
        pairs += [found] if found is not None else []
    pairs += http(url)
    for pair in pairs:
        base = report.record("idempotency", f"{pair.name}, without a key", pair.without, "IDs/s")
        if pair.name.startswith("raw "):
            note = f"a keyed statement costs {pair.cost:.2f}x an unkeyed one (no goal: the bound)"
        else:
            met = "met" if pair.cost <= GOAL else "not met"
            note = (
                f"a keyed allocation costs {pair.cost:.2f}x an unkeyed one (goal ≤ {GOAL}x: {met})"
            )
        keyed = f"{pair.name}, with an Idempotency-Key"
        report.record("idempotency", keyed, pair.keyed, "IDs/s", base, note=note)
    return pairs


def main() -> None:
    import asyncpg

    import idmanager

    server = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    name = "idm_bench_idem_" + uuid.uuid4().hex[:8]

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(server + "/postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = f"{server}/{name}"
        idmanager.migrate(url)
        started = time.perf_counter()
        pairs = measure(url)
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
    print(f"\n{'':<60} {'without':>9} {'with key':>9} {'cost':>6}")
    for pair in pairs:
        print(f"{pair.name:<60} {pair.without:>9,.0f} {pair.keyed:>9,.0f} {pair.cost:>5.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        url, connections, seconds, mode, api_key = sys.argv[2:7]
        asyncio.run(_load(url, int(connections), float(seconds), mode == "keyed", api_key))
    else:
        sys.path.insert(0, str(BENCH))
        main()
