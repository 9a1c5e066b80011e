"""ORM numbering under contention: the number drawn at the start of a transaction vs at commit.

32 concurrent business transactions (asyncio tasks, one AsyncSession each) on one hot prefix,
each doing 20 ms of other work. Drawn at the start (the model numbered at flush, flushed first),
the sequence's row stays locked for the 20 ms, so the transactions queue behind each other.
Drawn at commit (``numbered(..., at_commit=True)``), the lock is held only while committing.

For scale, the same transaction written by hand on raw asyncpg (number at commit) shows what
the machine allows, and the same ORM transaction with no numbering at all what the ORM allows.
The transaction by hand with no numbering too: the numbering's own CPU, numbered minus
unnumbered, is then shown in the ORM and by hand side by side. All 32 share one process and its
one core: a control runs the transaction by hand spending as much CPU as the numbered ORM
transaction (the difference burnt outside its lock), in turns with it as it is, to show what
that CPU alone costs a transaction that holds the lock no longer than by hand. ``hold_times``
measures how long the sequence's row stays locked at commit, from the allocation statement to
the end of COMMIT, one transaction at a time, and what runs in between: the Python calls from
the allocation's reply to the next statement (a count: free of noise), the write of the numbers
where it is a statement apart, the COMMIT. On PostgreSQL one document's number is allocated and
written by one statement.

Runs on a fresh PostgreSQL database on IDMANAGER_BENCH_PG (default 127.0.0.1:5432), dropped
afterwards. ``python bench/orm.py`` prints the figures; ``main()`` also returns them.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from internals import tasks_rate, timed_rate
from sqlalchemy import String
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_cursor,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from idmanager import create_async_engine, create_engine, format_id, migrate
from idmanager.orm import install, numbered

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_ORM_SECONDS", "5"))
CLIENTS = 32
WORK_S = 0.020
# Rounds of a second vary by ±10% on a shared machine (one run's numbered rounds: 815 to 1,311
# documents/s); the median of five is steadier than of three.
ROUNDS = 5


class Base(DeclarativeBase):
    pass


class DrawnAtStart(Base):
    __tablename__ = "bench_documents_at_start"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(300), unique=True, info=numbered("DOCS"))


class DrawnAtCommit(Base):
    __tablename__ = "bench_documents_at_commit"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(
        String(300), unique=True, info=numbered("DOCC", at_commit=True)
    )


class Unnumbered(Base):
    """The same document with no numbering: the ORM's own cost, the most it allows."""

    __tablename__ = "bench_documents_unnumbered"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(300), unique=True)


class ByHand(Base):
    __tablename__ = "bench_documents_by_hand"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(300), unique=True)


UPSERT = (
    "INSERT INTO id_managers (scope, prefix, last_value) VALUES ('', $1, 1) "
    "ON CONFLICT (scope, prefix) DO UPDATE SET last_value = id_managers.last_value + 1 "
    "RETURNING last_value"
)


@dataclass(frozen=True)
class Figures:
    """Documents per second committed with the number drawn at the start and at commit."""

    at_start: float
    at_commit: float
    by_hand: float
    unnumbered: float  # the same ORM transaction with no numbering at all
    # µs of this process's CPU per transaction, the median round of each
    at_commit_cpu: float
    by_hand_cpu: float
    unnumbered_cpu: float
    # The transaction by hand with no numbering: documents/s and µs of CPU each
    by_hand_unnumbered: float
    by_hand_unnumbered_cpu: float
    # The control: by hand, spending as much CPU as the numbered ORM transaction (the
    # difference burnt outside its lock), in turns with by hand as it is (documents/s)
    by_hand_as_busy: float
    by_hand_beside: float
    clients: int = CLIENTS
    work_ms: float = WORK_S * 1000

    @property
    def extra_cpu(self) -> float:
        """The CPU the control spends above the transaction by hand (µs)."""
        return max(0.0, self.at_commit_cpu - self.by_hand_cpu)

    @property
    def numbering_cpu(self) -> float:
        """The numbering's own CPU per transaction in the ORM: numbered minus unnumbered (µs)."""
        return self.at_commit_cpu - self.unnumbered_cpu

    @property
    def numbering_cpu_by_hand(self) -> float:
        """The same by hand: its upsert and update, numbered minus unnumbered (µs)."""
        return self.by_hand_cpu - self.by_hand_unnumbered_cpu

    @property
    def ratio(self) -> float:
        return self.at_commit / self.at_start


async def in_a_loop(transaction: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Run CLIENTS tasks repeating ``transaction`` for ``seconds``; return commits per second."""
    return await tasks_rate(CLIENTS, seconds, transaction)


async def timed_loop(
    transaction: Callable[[], Awaitable[object]], seconds: float
) -> tuple[float, float]:
    """As :func:`in_a_loop`; return commits per second and µs of this process's CPU each."""
    return await timed_rate(CLIENTS, seconds, transaction)


def _burn(seconds: float) -> None:
    """Keep this thread busy for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def as_busy(
    transaction: Callable[[], Awaitable[None]], extra_us: float
) -> Callable[[], Awaitable[None]]:
    """``transaction``, spending ``extra_us`` more CPU, half before it and half after: outside
    the sequence's lock, as the ORM's own work is."""
    half = extra_us / 2e6

    async def busier() -> None:
        _burn(half)
        await transaction()
        _burn(half)

    return busier


def orm_transaction(
    sessions: async_sessionmaker[AsyncSession],
    model: type[DrawnAtStart | DrawnAtCommit | Unnumbered],
) -> Callable[[], Awaitable[None]]:
    async def transaction() -> None:
        async with sessions() as session:
            await session.connection()  # the business transaction starts
            session.add(model())
            await session.flush()  # DrawnAtStart takes its number (and the lock) here
            await asyncio.sleep(WORK_S)  # the other work of the transaction
            await session.commit()  # DrawnAtCommit takes its number here

    return transaction


def by_hand_transaction(pool: asyncpg.Pool, numbered: bool = True) -> Callable[[], Awaitable[None]]:
    """The transaction by hand, numbered at commit; or with no numbering (into the unnumbered
    documents: the numbered ones must all have their numbers)."""
    table = "bench_documents_by_hand" if numbered else "bench_documents_unnumbered"

    async def transaction() -> None:
        async with pool.acquire() as connection, connection.transaction():
            row = await connection.fetchval(
                f"INSERT INTO {table} (number) VALUES (NULL) RETURNING id"
            )
            await asyncio.sleep(WORK_S)
            if numbered:
                last = await connection.fetchval(UPSERT, "DOCH")
                await connection.execute(
                    f"UPDATE {table} SET number = $1 WHERE id = $2",
                    format_id("DOCH", last),
                    row,
                )

    return transaction


async def measure(url: str, seconds: float = SECONDS) -> Figures:
    """Measure the three on the migrated database ``url``."""
    engine = create_async_engine(url, pool_size=CLIENTS, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    install(sessions)
    pool = await asyncpg.create_pool(url, min_size=CLIENTS, max_size=CLIENTS)
    runs = {
        "DOCS": orm_transaction(sessions, DrawnAtStart),
        "DOCC": orm_transaction(sessions, DrawnAtCommit),
        "DOCH": by_hand_transaction(pool),
        "none": orm_transaction(sessions, Unnumbered),
        "hand, none": by_hand_transaction(pool, numbered=False),
    }
    try:
        for transaction in runs.values():  # create the sequences, warm the pools
            await in_a_loop(transaction, 0.5)
        # In turns, ROUNDS times (the order reversed every other round), the median of each:
        # a burst of load from another process then costs every mode, not one.
        measured = await in_turns(runs, seconds)
        rates = {
            prefix: statistics.median(r for r, _ in found) for prefix, found in measured.items()
        }
        cpu = {prefix: statistics.median(c for _, c in found) for prefix, found in measured.items()}
        # The control: the transaction by hand, as busy as the numbered ORM's.
        extra = max(0.0, cpu["DOCC"] - cpu["DOCH"])
        control = {"DOCH": runs["DOCH"], "busy": as_busy(by_hand_transaction(pool), extra)}
        beside = await in_turns(control, seconds)
        busy = {prefix: statistics.median(r for r, _ in found) for prefix, found in beside.items()}
        # Gapless: as many numbers issued as documents committed.
        for model, prefix in ((DrawnAtStart, "DOCS"), (DrawnAtCommit, "DOCC"), (ByHand, "DOCH")):
            rows = await pool.fetchval(f"SELECT count(*) FROM {model.__tablename__}")
            issued = await pool.fetchval(
                "SELECT last_value FROM id_managers WHERE prefix = $1", prefix
            )
            assert rows == issued, f"{prefix}: {rows} documents but {issued} numbers issued"
    finally:
        await pool.close()
        await engine.dispose()
    return Figures(
        rates["DOCS"],
        rates["DOCC"],
        rates["DOCH"],
        rates["none"],
        cpu["DOCC"],
        cpu["DOCH"],
        cpu["none"],
        rates["hand, none"],
        cpu["hand, none"],
        busy["busy"],
        busy["DOCH"],
    )


async def in_turns(
    runs: dict[str, Callable[[], Awaitable[None]]], seconds: float
) -> dict[str, list[tuple[float, float]]]:
    """Run each of ``runs`` ROUNDS times in turns, ``seconds`` in all each (the order reversed
    every other round); return each one's rounds: commits per second, µs of CPU each."""
    measured: dict[str, list[tuple[float, float]]] = {prefix: [] for prefix in runs}
    for r in range(ROUNDS):
        for prefix in list(runs)[:: 1 if r % 2 == 0 else -1]:
            measured[prefix].append(await timed_loop(runs[prefix], seconds / ROUNDS))
    return measured


@dataclass(frozen=True)
class HoldTimes:
    """How long one commit holds the sequence's row, median over the transactions (ms).

    On PostgreSQL one document's number is allocated and written by one statement: the
    allocation then includes the write, and the write is 0.
    """

    orm_total: float  # the allocation statement sent .. COMMIT done
    orm_allocation: float  # the allocation statement
    orm_between: float  # its reply .. the next statement sent (the write, or COMMIT): Python
    orm_write: float  # the write of the numbers, if apart
    orm_commit: float  # COMMIT sent .. done
    orm_calls_between: float  # Python calls from the allocation's reply to the next statement
    by_hand_total: float  # raw asyncpg: the upsert sent .. COMMIT done
    transactions: int


@contextmanager
def _statements_timed(
    marks: dict[str, float], counting: cProfile.Profile, now: Callable[[], float]
) -> Iterator[None]:
    """Mark when each statement of SQLAlchemy's asyncpg adapter is sent and answered, and
    when COMMIT is sent and done; profile the Python from the allocation's reply to the next
    statement.

    At the DB-API cursor, below SQLAlchemy's cursor events: listening to those would take
    the allocation off the cursor (see ``direct.on_cursor``). For this benchmark only.
    """
    cursor, connection = AsyncAdapt_asyncpg_cursor, AsyncAdapt_asyncpg_connection
    execute, executemany, commit = (
        cursor._prepare_and_execute,
        cursor._executemany,
        connection.commit,
    )
    counted = [False]

    def next_sent(mark: str) -> None:
        if counted[0]:
            counting.disable()
            counted[0] = False
        marks.setdefault(mark, now())

    def sent(operation: str) -> None:
        next_sent("idm_sent" if "id_managers" in operation else "write_sent")

    def answered(operation: str) -> None:
        if "id_managers" in operation and "idm_reply" not in marks:
            marks["idm_reply"] = now()
            if marks.get("counting"):  # a second pass: the profiler would slow the first
                counting.enable()
                counted[0] = True
        elif "write_sent" in marks:
            marks.setdefault("write_reply", now())

    def timed(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(self: Any, operation: str, parameters: Any) -> Any:
            sent(operation)
            try:
                return await method(self, operation, parameters)
            finally:
                answered(operation)

        return run

    def timed_commit(self: Any) -> None:
        next_sent("commit_sent")
        try:
            commit(self)
        finally:
            marks.setdefault("committed", now())

    cursor._prepare_and_execute = timed(execute)
    cursor._executemany = timed(executemany)
    connection.commit = timed_commit
    try:
        yield
    finally:
        cursor._prepare_and_execute = execute
        cursor._executemany = executemany
        connection.commit = commit


async def hold_times(url: str, n: int = 300) -> HoldTimes:
    """Commit ``n`` documents numbered at commit, one at a time, timing the row's lock."""
    engine = create_async_engine(url, pool_size=1)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    install(sessions)
    marks: dict[str, float] = {}
    counting = cProfile.Profile()
    now = time.perf_counter
    rows: list[tuple[float, ...]] = []
    try:
        with _statements_timed(marks, counting, now):
            for i in range(n + 30 + n // 3):
                async with sessions() as session:
                    session.add(DrawnAtCommit())
                    await session.flush()
                    marks.clear()
                    marks["counting"] = 1.0 if i >= n + 30 else 0.0
                    await session.commit()
                if 30 <= i < n + 30:  # warmed up, not counted
                    sent, reply = marks["idm_sent"], marks["idm_reply"]
                    commit, done = marks["commit_sent"], marks["committed"]
                    write = marks.get("write_sent", commit)  # none apart: the next is COMMIT
                    written = marks.get("write_reply", write)
                    rows.append(
                        (done - sent, reply - sent, write - reply, written - write, done - commit)
                    )
        calls = pstats.Stats(counting).total_calls / (n // 3)
        by_hand = await _by_hand_hold(url, n)
    finally:
        await engine.dispose()
    medians = [statistics.median(r[i] for r in rows) * 1000 for i in range(5)]
    return HoldTimes(*medians, calls, by_hand, n)


async def _by_hand_hold(url: str, n: int) -> float:
    connection = await asyncpg.connect(url)
    held = []
    try:
        for i in range(n + 30):
            async with connection.transaction():
                row = await connection.fetchval(
                    "INSERT INTO bench_documents_by_hand (number) VALUES (NULL) RETURNING id"
                )
                began = time.perf_counter()
                last = await connection.fetchval(UPSERT, "DOCH")
                await connection.execute(
                    "UPDATE bench_documents_by_hand SET number = $1 WHERE id = $2",
                    format_id("DOCH", last),
                    row,
                )
            if i >= 30:
                held.append(time.perf_counter() - began)
    finally:
        await connection.close()
    return statistics.median(held) * 1000


def main(pg: str = PG, seconds: float = SECONDS) -> tuple[Figures, HoldTimes]:
    """Create a fresh PostgreSQL database, measure, print and return the figures, drop it."""
    name = "idm_bench_orm_" + uuid.uuid4().hex[:8]
    admin = create_engine(f"{pg}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = f"{pg}/{name}"
    try:
        migrate(url)
        tables = create_engine(url)
        Base.metadata.create_all(tables)
        tables.dispose()
        print(
            f"PostgreSQL: {CLIENTS} concurrent business transactions, {WORK_S * 1000:.0f} ms "
            f"of work each, one hot prefix, {seconds:.0f} s per mode in {ROUNDS} rounds in turns "
            "(documents/s, the median round)",
            flush=True,
        )
        figures = asyncio.run(measure(url, seconds))
        held = asyncio.run(hold_times(url))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    print(f"  number drawn at the start (at flush)   {figures.at_start:>10,.0f} documents/s")
    print(f"  number drawn at commit                 {figures.at_commit:>10,.0f} documents/s")
    print(f"  at commit / at the start               {figures.ratio:>10.1f}x")
    print(f"  by hand on raw asyncpg, at commit      {figures.by_hand:>10,.0f} documents/s")
    print(f"  the same ORM transaction, no numbering {figures.unnumbered:>10,.0f} documents/s")
    print(
        f"  CPU per transaction, this process (µs): numbered at commit {figures.at_commit_cpu:,.0f}"
        f", no numbering {figures.unnumbered_cpu:,.0f}, by hand {figures.by_hand_cpu:,.0f}"
    )
    print(
        f"  the numbering's own CPU per transaction (numbered minus unnumbered, µs): in the ORM "
        f"{figures.numbering_cpu:,.0f}, by hand {figures.numbering_cpu_by_hand:,.0f}; "
        f"numbered / unnumbered: ORM {figures.at_commit / figures.unnumbered:.2f}x, "
        f"by hand {figures.by_hand / figures.by_hand_unnumbered:.2f}x "
        f"({figures.by_hand_unnumbered:,.0f} documents/s)"
    )
    print(
        f"  by hand, as busy as the numbered ORM (+{figures.extra_cpu:,.0f} µs of CPU outside its "
        f"lock): {figures.by_hand_as_busy:,.0f} documents/s, "
        f"{figures.by_hand_as_busy / figures.by_hand_beside:.2f}x by hand in turns with it "
        f"({figures.by_hand_beside:,.0f})"
    )
    print(
        f"  the row locked at commit, median of {held.transactions} (ms): {held.orm_total:.2f} "
        f"(allocation {held.orm_allocation:.2f}, then {held.orm_between:.3f} of Python "
        f"({held.orm_calls_between:.0f} calls), the write apart {held.orm_write:.2f}, COMMIT "
        f"{held.orm_commit:.2f}); by hand on asyncpg {held.by_hand_total:.2f}"
    )
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return figures, held


if __name__ == "__main__":
    main()
