"""One load process against one database URL, recording every ID and every failure exactly.

A load allocates IDs with IdManager's stable public API only, in threads (sync drivers) or
asyncio tasks (async drivers), in the library's own short transaction or in the caller's,
until a wall-clock deadline shared with the other load processes and with whoever injects the
faults. Each failure is kept as its exception chain (``type(exc)``, its ``__cause__``, the
driver's exception and what that wraps), the driver's code (MySQL error number, SQLSTATE) and
the first line of the message: that is what a retry policy has to be written against.

A load also has a ``raw`` mode for MySQL/MariaDB that is not IdManager: one autocommit
``INSERT … ON DUPLICATE KEY UPDATE last_value = LAST_INSERT_ID(last_value + 1)``, the single
statement Galera may retry by itself (``wsrep_retry_autocommit``).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pymysql
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import idmanager
from idmanager import IdGeneratorUtil

# After a failure a client waits this long before its next attempt, so an outage is
# counted in attempts a client would really make, not in a busy loop's spins.
BACKOFF_S = 0.005
RAW_TABLE = "probe_seq"


@dataclass(frozen=True)
class Load:
    """What one load process does: ``mode`` is ``own``, ``caller`` or ``raw``."""

    url: str
    prefixes: tuple[str, ...]
    mode: str = "own"
    driver: str = "sync"
    workers: int = 8
    start_at: float = 0.0
    seconds: float = 10.0
    label: str = ""


@dataclass
class Outcome:
    """What a load got: IDs with the time they came back, attempts, failures by kind."""

    label: str
    started_at: float = 0.0
    ids: list[tuple[float, str]] = field(default_factory=list)
    attempts: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)
    failure_times: dict[str, list[float]] = field(default_factory=dict)
    slowest_s: float = 0.0  # the longest single attempt, success or failure

    def fail(self, stage: str, exc: BaseException) -> None:
        kind, message = describe(exc)
        key = f"{stage}: {kind} «{shape(chain(exc)[-1])}»"
        self.failures[key] += 1
        self.examples.setdefault(key, message)
        self.where.setdefault(key, raised_at(exc))
        self.failure_times.setdefault(key, []).append(time.time())


def _code(link: BaseException) -> str | None:
    """Return the driver's code of one link: MySQL's error number and SQLSTATE, or SQLSTATE.

    PyMySQL (and aiomysql, which raises PyMySQL's errors) sets ``sqlstate`` too on errors
    from the server, since 1.1: a MySQL error reads ``1213/40001``.
    """
    sqlstate = getattr(link, "sqlstate", None)
    state = sqlstate if isinstance(sqlstate, str) and sqlstate else None
    if isinstance(link, pymysql.err.MySQLError) and link.args and isinstance(link.args[0], int):
        return f"{link.args[0]}/{state}" if state else str(link.args[0])
    return state


def _name(link: BaseException) -> str:
    cls = type(link)
    return f"{cls.__module__}.{cls.__qualname__}".replace("sqlalchemy.dialects.", "sa.")


def chain(exc: BaseException) -> list[BaseException]:
    """Return ``exc`` and what caused it, outermost first (``__cause__``, else ``.orig``)."""
    links: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and all(node is not seen for seen in links):
        links.append(node)
        orig = getattr(node, "orig", None)
        node = node.__cause__ or (orig if isinstance(orig, BaseException) else None)
    return links


def describe(exc: BaseException) -> tuple[str, str]:
    """Return ``"A <- B <- C [code]"`` and the first line of the outermost message."""
    links = chain(exc)
    codes = [code for code in map(_code, links) if code]
    kind = " <- ".join(map(_name, links)) + (f" [{codes[0]}]" if codes else "")
    text = str(exc).strip() or repr(exc)
    return kind, text.splitlines()[0][:300]


def shape(link: BaseException) -> str:
    """Return the start of a message without its numbers: one key for "port 5432" and "5433"."""
    text = (str(link).strip().splitlines() or [type(link).__name__])[0]
    return re.sub(r"\d+", "N", text)[:60]


def raised_at(exc: BaseException) -> list[str]:
    """Return the last frames of IdManager's own code the exception went through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/idmanager/" in f.filename] or frames[-1:]
    return [f"{f.filename.split('/idmanager/')[-1]}:{f.lineno} {f.name}" for f in ours[-2:]]


# --- sync --------------------------------------------------------------------------------------


def _sync_once(
    engine: sa.Engine, load: Load, prefix: str, out: Outcome, lock: threading.Lock
) -> None:
    stage = "generate"
    try:
        if load.mode == "own":
            new_id = IdGeneratorUtil.generate_id(prefix, engine)
        else:
            with Session(engine) as session:
                new_id = IdGeneratorUtil.generate_id(prefix, session)
                stage = "commit"
                session.commit()
    except Exception as exc:  # every failure is a finding
        with lock:
            out.fail(stage, exc)
        time.sleep(BACKOFF_S)
        return
    with lock:
        out.ids.append((time.time(), new_id))


def _raw_connect(url: str) -> Any:
    parsed = sa.engine.make_url(url)
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        database=parsed.database,
        autocommit=True,
        connect_timeout=5,
    )


def _raw_once(
    state: dict[str, Any], load: Load, prefix: str, out: Outcome, lock: threading.Lock
) -> None:
    """One allocation by a single autocommit statement; the value comes back as insert id."""
    try:
        if state.get("connection") is None:
            state["connection"] = _raw_connect(load.url)
        with state["connection"].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {RAW_TABLE} (name, last_value) VALUES (%s, LAST_INSERT_ID(1)) "
                "ON DUPLICATE KEY UPDATE last_value = LAST_INSERT_ID(last_value + 1)",
                (prefix,),
            )
            value = int(cursor.lastrowid)
    except Exception as exc:
        with lock:
            out.fail("statement", exc)
        if isinstance(exc, pymysql.err.OperationalError) and exc.args[0] in (2003, 2006, 2013):
            state["connection"] = None
        time.sleep(BACKOFF_S)
        return
    with lock:
        out.ids.append((time.time(), f"{prefix}-{value}"))


def _run_sync(load: Load) -> Outcome:
    out = Outcome(load.label, started_at=load.start_at)
    lock = threading.Lock()
    engine = idmanager.create_engine(load.url, pool_size=load.workers, max_overflow=0)
    deadline = load.start_at + load.seconds

    def worker(number: int) -> None:
        prefix = load.prefixes[number % len(load.prefixes)]
        state: dict[str, Any] = {}
        while time.time() < deadline:
            with lock:
                out.attempts += 1
            began = time.monotonic()
            if load.mode == "raw":
                _raw_once(state, load, prefix, out, lock)
            else:
                _sync_once(engine, load, prefix, out, lock)
            with lock:
                out.slowest_s = max(out.slowest_s, time.monotonic() - began)
        if state.get("connection") is not None:
            state["connection"].close()

    _sleep_until(load.start_at)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(load.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    return out


# --- async -------------------------------------------------------------------------------------


async def _async_once(engine: Any, load: Load, prefix: str, out: Outcome) -> None:
    stage = "generate"
    try:
        if load.mode == "own":
            new_id = await IdGeneratorUtil.generate_id(prefix, engine)
        else:
            async with AsyncSession(engine) as session:
                new_id = await IdGeneratorUtil.generate_id(prefix, session)
                stage = "commit"
                await session.commit()
    except Exception as exc:
        out.fail(stage, exc)
        await asyncio.sleep(BACKOFF_S)
        return
    out.ids.append((time.time(), new_id))


async def _run_async(load: Load) -> Outcome:
    out = Outcome(load.label, started_at=load.start_at)
    engine = idmanager.create_async_engine(load.url, pool_size=load.workers, max_overflow=0)
    deadline = load.start_at + load.seconds

    async def worker(number: int) -> None:
        prefix = load.prefixes[number % len(load.prefixes)]
        while time.time() < deadline:
            out.attempts += 1
            began = time.monotonic()
            await _async_once(engine, load, prefix, out)
            out.slowest_s = max(out.slowest_s, time.monotonic() - began)

    await asyncio.sleep(max(0.0, load.start_at - time.time()))
    await asyncio.gather(*(worker(n) for n in range(load.workers)))
    await engine.dispose()
    return out


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def run_load(load: Load) -> Outcome:
    """Run one load to its deadline (the entry point of a load process)."""
    if load.driver == "async":
        return asyncio.run(_run_async(load))
    return _run_sync(load)
