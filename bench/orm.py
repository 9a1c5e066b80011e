"""ORM numbering under contention: the number drawn at the start of a transaction vs at commit.

32 concurrent business transactions (asyncio tasks, one AsyncSession each) on one hot prefix,
each doing 20 ms of other work. Drawn at the start (the model numbered at flush, flushed first),
the sequence's row stays locked for the 20 ms, so the transactions queue behind each other.
Drawn at commit (``numbered(..., at_commit=True)``), the lock is held only while committing.

For scale, the same transaction written by hand on raw asyncpg (number at commit) shows what
the machine allows. Runs on a fresh PostgreSQL database on IDMANAGER_BENCH_PG (default
127.0.0.1:5432), dropped afterwards. ``python bench/orm.py`` prints the figures; ``main()``
also returns them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from idmanager import create_async_engine, create_engine, format_id, migrate
from idmanager.orm import install, numbered

PG = os.environ.get("IDMANAGER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
SECONDS = float(os.environ.get("IDMANAGER_BENCH_ORM_SECONDS", "5"))
CLIENTS = 32
WORK_S = 0.020


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
    clients: int = CLIENTS
    work_ms: float = WORK_S * 1000

    @property
    def ratio(self) -> float:
        return self.at_commit / self.at_start


async def in_a_loop(transaction: Callable[[], Awaitable[object]], seconds: float) -> float:
    """Run CLIENTS tasks repeating ``transaction`` for ``seconds``; return commits per second."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await transaction()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / (time.perf_counter() - start)


def orm_transaction(
    sessions: async_sessionmaker[AsyncSession], model: type[DrawnAtStart | DrawnAtCommit]
) -> Callable[[], Awaitable[None]]:
    async def transaction() -> None:
        async with sessions() as session:
            await session.connection()  # the business transaction starts
            session.add(model())
            await session.flush()  # DrawnAtStart takes its number (and the lock) here
            await asyncio.sleep(WORK_S)  # the other work of the transaction
            await session.commit()  # DrawnAtCommit takes its number here

    return transaction


def by_hand_transaction(pool: asyncpg.Pool) -> Callable[[], Awaitable[None]]:
    async def transaction() -> None:
        async with pool.acquire() as connection, connection.transaction():
            row = await connection.fetchval(
                "INSERT INTO bench_documents_by_hand (number) VALUES (NULL) RETURNING id"
            )
            await asyncio.sleep(WORK_S)
            last = await connection.fetchval(UPSERT, "DOCH")
            await connection.execute(
                "UPDATE bench_documents_by_hand SET number = $1 WHERE id = $2",
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
    }
    try:
        for transaction in runs.values():  # create the sequences, warm the pools
            await in_a_loop(transaction, 0.5)
        rates = {prefix: await in_a_loop(run, seconds) for prefix, run in runs.items()}
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
    return Figures(rates["DOCS"], rates["DOCC"], rates["DOCH"])


def main(pg: str = PG, seconds: float = SECONDS) -> Figures:
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
            f"of work each, one hot prefix, {seconds:.0f} s per mode (documents/s)",
            flush=True,
        )
        figures = asyncio.run(measure(url, seconds))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    print(f"  number drawn at the start (at flush)   {figures.at_start:>10,.0f} documents/s")
    print(f"  number drawn at commit                 {figures.at_commit:>10,.0f} documents/s")
    print(f"  at commit / at the start               {figures.ratio:>10.1f}x")
    print(f"  by hand on raw asyncpg, at commit      {figures.by_hand:>10,.0f} documents/s")
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return figures


if __name__ == "__main__":
    main()
