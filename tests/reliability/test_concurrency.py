"""Concurrency on real databases: tasks, threads and processes never get a duplicate or a gap.

Every writer commits its own transaction per ID (the caller's-transaction mode), so the row lock
serialises writers of one prefix and the committed IDs must be exactly ordinals 1..N.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import idmanager
from idmanager import IdGeneratorUtil, parse_id
from processes import reaped

ALLOCATOR = Path(__file__).with_name("allocator.py")


def ordinals(issued: list[str], prefix: str) -> list[int]:
    """Return the sorted ordinals of ``issued``, checking each is an ID of ``prefix``."""
    parsed = [parse_id(text) for text in issued]
    assert {p.prefix for p in parsed} <= {prefix}
    return sorted(p.ordinal for p in parsed)


def assert_exactly_one_to(issued: list[str], prefix: str, n: int) -> None:
    found = ordinals(issued, prefix)
    duplicates = len(found) - len(set(found))
    assert duplicates == 0, f"{duplicates} duplicate IDs"
    assert found == list(range(1, n + 1)), f"expected ordinals 1..{n}, got {found[:5]}…{found[-5:]}"


def last_value(url: str, prefix: str) -> int:
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT last_value FROM id_managers WHERE prefix = :p AND scope = ''"),
                    {"p": prefix},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def seed_ids(prefix: str) -> Iterator[str]:
    """Yield the default format's IDs from ``AAA0001``, computed independently of idmanager."""
    for width in itertools.count(3):
        for letters in itertools.product(string.ascii_uppercase, repeat=width):
            for number in range(1, 10_000):
                yield f"{prefix}-{''.join(letters)}{number:04d}"


# --- asyncio tasks ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
async def test_32_tasks_x_50_ids_no_duplicate_no_gap(url: str, prefix: str) -> None:
    tasks, per_task = 32, 50
    engine = idmanager.create_async_engine(url, pool_size=tasks, max_overflow=0)

    async def worker() -> list[str]:
        issued = []
        for _ in range(per_task):
            async with AsyncSession(engine) as session:
                issued.append(await IdGeneratorUtil.generate_id(prefix, session))
                await session.commit()
        return issued

    try:
        results = await asyncio.gather(*(worker() for _ in range(tasks)))
    finally:
        await engine.dispose()
    issued = [i for result in results for i in result]
    assert len(issued) == tasks * per_task
    assert_exactly_one_to(issued, prefix, tasks * per_task)
    for result in results:  # each task saw its own IDs in increasing order
        assert ordinals(result, prefix) == [parse_id(i).ordinal for i in result]
    assert last_value(url, prefix) == tasks * per_task


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
async def test_16_tasks_with_30_percent_rollbacks_leave_no_gap(url: str, prefix: str) -> None:
    tasks, per_task = 16, 25
    engine = idmanager.create_async_engine(url, pool_size=tasks, max_overflow=0)
    # Create the sequence first. (On MariaDB, a rolled-back *creation* of a prefix that
    # other transactions are waiting for deadlocks all but one of them: InnoDB's gap locks.)
    created = await IdGeneratorUtil.generate_id(prefix, engine)
    rng = random.Random(20240628)
    plan = [[rng.random() < 0.3 for _ in range(per_task)] for _ in range(tasks)]

    async def worker(rollbacks: list[bool]) -> tuple[list[str], int]:
        committed, rolled_back = [], 0
        for roll_back in rollbacks:
            async with AsyncSession(engine) as session:
                issued = await IdGeneratorUtil.bulk_generate_ids(prefix, 2, session)
                await asyncio.sleep(0)  # let others queue on the row lock
                if roll_back:
                    await session.rollback()
                    rolled_back += 1
                else:
                    await session.commit()
                    committed.extend(issued)
        return committed, rolled_back

    try:
        results = await asyncio.gather(*(worker(p) for p in plan))
    finally:
        await engine.dispose()
    committed = [created] + [i for ids, _ in results for i in ids]
    assert sum(n for _, n in results) == sum(map(sum, plan)) > 0
    assert_exactly_one_to(committed, prefix, len(committed))
    assert last_value(url, prefix) == len(committed)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
async def test_health_checks_during_load_leave_nothing(url: str, prefix: str) -> None:
    engine = idmanager.create_async_engine(url, pool_size=12, max_overflow=0)

    async def allocate() -> list[str]:
        issued = []
        for _ in range(30):
            async with AsyncSession(engine) as session:
                issued.append(await IdGeneratorUtil.generate_id(prefix, session))
                await session.commit()
        return issued

    async def check() -> list[str]:
        statuses = []
        for _ in range(15):
            async with AsyncSession(engine) as session:
                service = idmanager.IdManagerService(idmanager.IdManagerRepositoryImpl(session))
                statuses.append((await service.health_check())["status"])
                await session.commit()
        return statuses

    try:
        results = await asyncio.gather(
            *(allocate() for _ in range(8)), *(check() for _ in range(4))
        )
        async with engine.connect() as connection:
            leftover = await connection.scalar(
                sa.text("SELECT count(*) FROM id_managers WHERE prefix = '_HEALTH_CHECK_'")
            )
    finally:
        await engine.dispose()
    assert_exactly_one_to([i for r in results[:8] for i in r], prefix, 240)
    assert {s for r in results[8:] for s in r} == {"healthy"}
    assert leftover == 0


# --- threads with sync sessions --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_8_threads_with_sync_sessions(url: str, prefix: str) -> None:
    threads, per_thread = 8, 50
    engine = idmanager.create_engine(url, pool_size=threads, max_overflow=0)
    results: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def worker(out: list[str]) -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                with Session(engine) as session:
                    out.append(IdGeneratorUtil.generate_id(prefix, session))
                    session.commit()
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=worker, args=(r,)) for r in results]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(120)
    engine.dispose()
    assert errors == []
    assert_exactly_one_to([i for r in results for i in r], prefix, threads * per_thread)


# --- OS processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_4_processes_no_duplicate_no_error(url: str, prefix: str) -> None:
    per_process = 300
    modes = ["sync", "async", "sync", "async"]
    processes = [
        subprocess.Popen(
            [sys.executable, str(ALLOCATOR), url, prefix, str(per_process), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == "ready", (line, process.stderr and process.stderr.read())
        for process in processes:  # all start allocating at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    results = []
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]
    issued = [i for r in results for i in r["ids"]]
    assert_exactly_one_to(issued, prefix, 4 * per_process)
    assert last_value(url, prefix) == 4 * per_process


# --- a million IDs in one call -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_million_ids_in_one_call(url: str, prefix: str) -> None:
    engine = idmanager.create_async_engine(url)
    statements: list[str] = []
    sa.event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    try:
        async with AsyncSession(engine) as session:
            # Registered first: a first use also creates the sequence and audits that.
            await session.run_sync(
                lambda sync: idmanager.SyncIdManagerService(
                    idmanager.IdManagerRepositoryImpl(sync)
                ).configure_prefix(prefix)
            )
            await session.commit()
        async with AsyncSession(engine) as session:
            await session.connection()
            statements.clear()
            issued = await IdGeneratorUtil.bulk_generate_ids(prefix, 1_000_000, session)
            bulk_statements = list(statements)
            await session.commit()
        async with AsyncSession(engine) as session:
            following = await IdGeneratorUtil.generate_id(prefix, session)
            await session.commit()
    finally:
        await engine.dispose()
    expected = list(itertools.islice(seed_ids(prefix), 1_000_001))
    assert len(issued) == 1_000_000
    assert len(set(issued)) == 1_000_000
    assert issued[0] == f"{prefix}-AAA0001"
    assert issued[-1] == expected[999_999] == f"{prefix}-ADW0100"
    assert issued == expected[:1_000_000]
    assert following == expected[1_000_000]
    assert len(bulk_statements) == 1, bulk_statements  # its speed: bench/run.py


# --- migrations at once ------------------------------------------------------------------------

MIGRATE = "import sys, idmanager; idmanager.migrate(sys.argv[1]); print('migrated')"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
def test_4_processes_migrating_one_database_at_once(backend: str, databases: Any) -> None:
    """Replicas that start together all run the migrations: every one must succeed."""
    url = databases.create(backend, migrate=False)
    with reaped([]) as processes:
        processes.extend(
            subprocess.Popen(
                [sys.executable, "-c", MIGRATE, url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        )
        outputs = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert (process.returncode, out.strip()) == (0, "migrated"), err[-2000:]
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            version = connection.execute(
                sa.text("SELECT version_num FROM idmanager_alembic_version")
            )
            assert version.all() == [("003",)]
        assert IdGeneratorUtil.generate_id("MIG", engine) == "MIG-AAA0001"
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "mariadb"])
async def test_read_then_write_transactions_never_fail(url: str, prefix: str) -> None:
    """Reading before allocating in one transaction must not fail with "database is locked".

    (SQLite refuses to upgrade a read transaction to a write one if another writer committed
    meanwhile, whatever the busy timeout: idmanager's engines begin every transaction
    IMMEDIATE, so the transaction is a writer from its start.)
    """
    tasks, per_task = 16, 20
    engine = idmanager.create_async_engine(url, pool_size=tasks, max_overflow=0)

    async def worker() -> list[str]:
        issued = []
        for _ in range(per_task):
            async with AsyncSession(engine) as session:
                before = await IdGeneratorUtil.get_current_id(prefix, session)
                await asyncio.sleep(0)
                issued.append(await IdGeneratorUtil.generate_id(prefix, session))
                await session.commit()
            assert before is None or parse_id(before).ordinal < parse_id(issued[-1]).ordinal
        return issued

    try:
        results = await asyncio.gather(*(worker() for _ in range(tasks)))
    finally:
        await engine.dispose()
    assert_exactly_one_to([i for r in results for i in r], prefix, tasks * per_task)
