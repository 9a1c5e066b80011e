"""Where the CPU of each allocation path goes: cProfile, grouped into the layers it crosses.

For each path of bench/cpu_paths.py (or those named on the command line), run it back to back
under cProfile and print:

- the share of the profiled time spent *in* each layer (self time of the functions, grouped by
  the package they belong to: the driver, SQLAlchemy's pool, its Connection and execution
  context, its compiler and cache, its result rows, its ORM Session, its asyncio/greenlet
  bridge, the event loop, idmanager's own layers, FastAPI/Starlette, Pydantic, the metrics);
- the functions with the most self time.

cProfile adds a fixed cost to every Python call, so Python-heavy layers look somewhat bigger
than they are against C code (the driver, sqlite3): read the shares as an ordering and a rough
size, and bench/cpu.py's figures (no profiler) as the costs.

``python bench/profiles.py [SUBSTRING ...]`` profiles the paths whose name or group contains
one of the substrings (all library paths by default).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from cpu import fresh_databases, prefixes
from cpu_paths import PATHS, Env, Op, Path

SECONDS = float(os.environ.get("IDMANAGER_BENCH_PROFILE_SECONDS", "1.5"))
TOP = 12
NOTE = (
    "Each library path run back to back under cProfile with a CPU clock (waits for the "
    "database cost nothing), 1 client, hot prefix. Self time grouped by the layer it belongs "
    "to (a builtin's time goes to its caller's layer). The profiler adds a fixed cost to "
    "every Python call, so Python-heavy layers look bigger than they are against C code (the "
    "drivers, sqlite3): read the shares as an ordering; the CPU table above has the costs."
)

# (layer, markers in the file path or function name); the first match wins.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("asyncpg driver", ("/asyncpg/", "asyncpg.protocol", "'asyncpg")),
    ("psycopg driver", ("/psycopg/", "/psycopg_binary/", "psycopg")),
    ("sqlite3 driver (C) + aiosqlite", ("sqlite3.", "/sqlite3/", "/aiosqlite/")),
    (
        "SQLAlchemy asyncio + greenlet bridge",
        ("/sqlalchemy/ext/asyncio/", "concurrency", "greenlet"),
    ),
    ("SQLAlchemy dialect adapter", ("/sqlalchemy/dialects/", "/sqlalchemy/connectors/")),
    ("SQLAlchemy pool", ("/sqlalchemy/pool/",)),
    ("SQLAlchemy ORM Session", ("/sqlalchemy/orm/",)),
    (
        "SQLAlchemy result rows",
        (
            "/sqlalchemy/engine/cursor.py",
            "/sqlalchemy/engine/result.py",
            "/sqlalchemy/engine/row.py",
            "/sqlalchemy/engine/_row_cy",
            "/sqlalchemy/engine/_result_cy",
            "/sqlalchemy/engine/processors",
            "/sqlalchemy/engine/_processors_cy",
        ),
    ),
    ("SQLAlchemy Connection + execution context", ("/sqlalchemy/engine/",)),
    ("SQLAlchemy events", ("/sqlalchemy/event/",)),
    ("SQLAlchemy compiler + statement cache", ("/sqlalchemy/sql/",)),
    ("SQLAlchemy util", ("/sqlalchemy/util/", "/sqlalchemy/")),
    ("idmanager API key check (hmac, sha256)", ("/idmanager/api/security", "hmac", "_hashlib")),
    ("JSON encoding", ("/json/", "_json")),
    ("idmanager api", ("/idmanager/api/",)),
    ("idmanager ORM numbering", ("/idmanager/orm.py",)),
    ("idmanager repository + engines", ("/idmanager/infrastructure/",)),
    ("idmanager service + use cases + facade", ("/idmanager/application/", "/idmanager/facade")),
    ("idmanager domain (format, validation)", ("/idmanager/domain/",)),
    ("prometheus_client metrics", ("/prometheus_client/",)),
    ("Pydantic", ("/pydantic", "pydantic_core")),
    ("FastAPI + Starlette", ("/fastapi/", "/starlette/", "/anyio/")),
    ("asyncio event loop", ("/asyncio/", "uvloop", "selectors", "_asyncio", "select.epoll")),
    ("benchmark harness", ("/bench/",)),
)


def layer_of(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    for layer, markers in LAYERS:
        if any(m in where for m in markers):
            return layer
    return "other (builtins, stdlib)"


@dataclass(frozen=True)
class Profile:
    path: Path
    calls: int
    total_s: float
    layers: list[tuple[str, float]]  # (layer, share of profiled self time)
    top: list[tuple[str, float, int]]  # (function, share, calls)


async def _profile_op(op: Op, names: list[str], seconds: float) -> tuple[cProfile.Profile, int]:
    # CPU time, not wall time: waits for the database (epoll, psycopg's wait) cost nothing.
    profiler = cProfile.Profile(time.process_time)
    done, stop = 0, time.perf_counter() + 0.3
    while time.perf_counter() < stop:  # warm-up, unprofiled
        result = op.call(names[0])
        if op.is_async:
            await result
    profiler.enable()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        result = op.call(names[0])
        if op.is_async:
            await result
        done += 1
    profiler.disable()
    return profiler, done


def _attributed(
    filename: str, function: str, tottime: float, callers: dict[Any, Any]
) -> list[tuple[str, float]]:
    """Return the layers a function's self time belongs to.

    A builtin or standard library function (getattr, isinstance, a socket's send, typing's
    get_origin) belongs to whoever called it: its time is split among its callers' layers as
    cProfile measured it. A driver's C methods keep their own layer (they match a marker).
    """
    own = layer_of(filename, function)
    if not own.startswith("other") or not callers:
        return [(own, tottime)]
    shares = []
    for (caller_file, _line, caller_function), stats in callers.items():
        shares.append((layer_of(caller_file, caller_function), stats[2]))
    measured = sum(t for _, t in shares) or 1.0
    return [(layer, tottime * t / measured) for layer, t in shares]


def summarize(path: Path, profiler: cProfile.Profile, calls: int) -> Profile:
    stats = pstats.Stats(profiler)
    entries = stats.stats
    total = sum(tottime for (_cc, _nc, tottime, _ct, _callers) in entries.values()) or 1.0
    layers: dict[str, float] = defaultdict(float)
    functions = []
    for (filename, line, function), (_cc, ncalls, tottime, _ct, callers) in entries.items():
        for layer, share in _attributed(filename, function, tottime, callers):
            layers[layer] += share
        short = filename.split("site-packages/")[-1].split("/src/")[-1]
        functions.append((f"{short}:{line}({function})", tottime / total, ncalls))
    ordered = sorted(((k, v / total) for k, v in layers.items()), key=lambda kv: -kv[1])
    functions.sort(key=lambda f: -f[1])
    return Profile(path, calls, total, ordered, functions[:TOP])


def show(profile: Profile) -> None:
    per_call = profile.total_s / max(profile.calls, 1) * 1e6
    print(f"\n{profile.path.group}: {profile.path.name}")
    print(f"  {profile.calls:,} allocations profiled, {per_call:.0f} µs each under the profiler")
    for layer, share in profile.layers:
        if share >= 0.01:
            print(f"    {share:6.1%}  {layer}")
    print("  functions with the most self time:")
    for name, share, ncalls in profile.top:
        print(f"    {share:6.1%}  {name}  ({ncalls / max(profile.calls, 1):.1f} calls/ID)")


async def profile_paths(paths: list[Path], env: Env, seconds: float = SECONDS) -> list[Profile]:
    out = []
    for path in paths:
        async with path.setup(env) as op:
            profiler, calls = await _profile_op(op, prefixes(True, env), seconds)
        out.append(summarize(path, profiler, calls))
        show(out[-1])
    return out


def markdown(profiles: list[Profile], layers: int = 6, functions: int = 4) -> list[str]:
    """Return each profile's top layers and functions as a markdown table."""
    lines = [
        "| path | top layers (share of profiled CPU) | functions with the most self time |",
        "| --- | --- | --- |",
    ]
    for p in profiles:
        top = ", ".join(f"{layer} {share:.0%}" for layer, share in p.layers[:layers])
        hot = "; ".join(
            f"`{name.split('/')[-1]}` {share:.0%}" for name, share, _ in p.top[:functions]
        )
        lines.append(f"| {p.path.group}: {p.path.name} | {top} | {hot} |")
    return lines


def chosen(words: list[str]) -> list[Path]:
    if not words:
        return [p for p in PATHS if not p.name.startswith(("raw", "bare", "by hand"))]
    return [p for p in PATHS if any(w in p.name or w == p.group for w in words)]


def main(words: list[str]) -> None:
    env, _name, cleanup = fresh_databases()
    try:
        asyncio.run(profile_paths(chosen(words), env))
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
