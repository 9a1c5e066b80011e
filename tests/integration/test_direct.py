"""The own-transaction allocation on the driver connection (infrastructure/direct.py).

It bypasses SQLAlchemy's Connection, so what SQLAlchemy did for it is checked here: a
connection the failure may have broken is thrown away (killed by the server, cancelled
mid-statement), the engine's own options reach the statement (lock_timeout in the connect
arguments, asyncpg without a statement cache for pgbouncer), and SQLite's connections of its
own (one per thread, one for aiosqlite) are made by the engine and closed with it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Traced
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import idmanager
from idmanager import BusyError, StorageError
from idmanager.infrastructure import direct
from idmanager.infrastructure.database import sync_url


def _pg_engine(url: str, mode: str, **connect_args: Any) -> Any:
    make = idmanager.create_async_engine if mode == "async" else idmanager.create_engine
    return make(url, pool_size=1, max_overflow=0, connect_args=connect_args)


async def _resolve(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


def _admin(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(sql), params)
    engine.dispose()


def _unawaited(recwarn: pytest.WarningsRecorder) -> list[str]:
    """Return the warnings of coroutines created and never awaited (a connect refused
    for want of the greenlet bridge)."""
    return [str(w.message) for w in recwarn if "never awaited" in str(w.message)]


async def _pid(engine: Any) -> int:
    """Return the server pid of the connection a pool of one holds."""
    fairy = await _resolve(engine.raw_connection())
    try:
        connection = fairy.driver_connection
        pid = connection.get_server_pid() if hasattr(connection, "get_server_pid") else None
        return int(pid if pid is not None else connection.info.backend_pid)
    finally:
        fairy.close()


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_connection_the_server_killed_is_thrown_away(
    postgres_url: str, prefix: str, mode: str, recwarn: pytest.WarningsRecorder
) -> None:
    engine = _pg_engine(postgres_url, mode)
    use_cases = idmanager.connect(engine)
    try:
        assert (await _resolve(use_cases.allocate(prefix)))[0].endswith("0001")
        _admin(postgres_url, "SELECT pg_terminate_backend(:pid)", pid=await _pid(engine))
        await asyncio.sleep(0.1)
        # The pooled connection is dead: the allocation fails as an outage, and the
        # connection is not handed out again (the pool holds one).
        with pytest.raises(StorageError, match="Database unavailable"):
            await _resolve(use_cases.allocate(prefix))
        assert (await _resolve(use_cases.allocate(prefix)))[0].endswith("0002")
        assert engine.pool.checkedout() == 0
    finally:
        await _resolve(engine.dispose())
    assert _unawaited(recwarn) == []


async def test_backends_killed_while_idle_cost_one_allocation_at_most(
    postgres_url: str, prefix: str, recwarn: pytest.WarningsRecorder
) -> None:
    """All of a pool's backends ended at once (pg_terminate_backend, a restart): whatever
    asyncpg makes of each (a closed connection, or a protocol stuck on the FATAL message it
    read), the first allocation to meet one throws the pool's connections away."""
    engine = idmanager.create_async_engine(postgres_url, pool_size=4, max_overflow=0)
    use_cases = idmanager.connect(engine)
    try:
        held = [await engine.raw_connection() for _ in range(4)]
        for fairy in held:
            fairy.close()
        await use_cases.allocate(prefix)
        _admin(
            postgres_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        outcomes: list[str] = []
        for _ in range(6):
            try:
                outcomes.append((await use_cases.allocate(prefix))[0])
            except StorageError:
                outcomes.append("503")
        assert "503" not in outcomes[1:], outcomes  # at most the first one failed
        issued = [o for o in outcomes if o != "503"]
        assert issued == [f"{prefix}-AAA{n:04d}" for n in range(2, 2 + len(issued))]
    finally:
        await engine.dispose()
    assert _unawaited(recwarn) == []


async def test_an_idle_connection_is_checked_out_without_the_greenlet_bridge(
    postgres_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge costs as much as the rest of the checkout: a warm pool of connected idle
    connections hands one out, and takes it back, in plain code."""
    engine = idmanager.create_async_engine(postgres_url, pool_size=2, max_overflow=0)
    use_cases = idmanager.connect(engine)
    bridged: list[str] = []
    real = direct.greenlet_spawn

    def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        bridged.append(getattr(fn, "__qualname__", repr(fn)))
        return real(fn, *args, **kwargs)

    try:
        await use_cases.allocate(prefix)  # the pool connects: through the bridge
        monkeypatch.setattr(direct, "greenlet_spawn", counted)
        issued = [(await use_cases.allocate(prefix))[0] for _ in range(5)]
        assert issued[-1].endswith("0006")
        assert bridged == []
    finally:
        await engine.dispose()


async def test_after_the_pool_is_invalidated_allocations_reconnect(
    postgres_url: str, prefix: str, recwarn: pytest.WarningsRecorder
) -> None:
    """Idle connections are handed out without the greenlet bridge, but not stale ones."""
    engine = idmanager.create_async_engine(postgres_url, pool_size=3, max_overflow=0)
    use_cases = idmanager.connect(engine)
    try:
        held = [await engine.raw_connection() for _ in range(3)]  # three idle connections
        pids = [f.driver_connection.get_server_pid() for f in held]
        for fairy in held:
            fairy.close()
        await use_cases.allocate(prefix)
        for pid in pids:
            _admin(postgres_url, "SELECT pg_terminate_backend(:pid)", pid=pid)
        await asyncio.sleep(0.1)
        # A session meets a dead connection: SQLAlchemy invalidates the whole pool.
        with pytest.raises(sa.exc.DBAPIError):
            async with AsyncSession(engine) as session:
                await session.execute(sa.text("SELECT 1"))
        issued = [(await use_cases.allocate(prefix))[0] for _ in range(6)]
        assert issued[-1].endswith("0007") and len(set(issued)) == 6
    finally:
        await engine.dispose()
    # Stale connections were reconnected through the bridge, none tried without it.
    assert _unawaited(recwarn) == []


async def test_a_cancelled_allocation_does_not_return_its_connection(
    postgres_url: str, prefix: str
) -> None:
    engine = _pg_engine(postgres_url, "async")
    use_cases = idmanager.connect(engine)
    locker = sa.create_engine(sync_url(postgres_url), poolclass=sa.pool.NullPool)
    try:
        await use_cases.allocate(prefix)
        with locker.begin() as connection:
            connection.execute(
                sa.text("SELECT 1 FROM id_managers WHERE prefix = :p FOR UPDATE"), {"p": prefix}
            )
            waiting = asyncio.create_task(use_cases.allocate(prefix))
            await asyncio.sleep(0.3)  # the statement waits for the row lock
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        # Mid-statement, the connection's state is unknown: thrown away, never reused.
        assert engine.pool.checkedout() == 0
        ids = await use_cases.allocate(prefix)
        assert ids[0].endswith(("0002", "0003"))  # the cancelled one may have committed
    finally:
        locker.dispose()
        await engine.dispose()


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_the_engines_lock_timeout_applies(postgres_url: str, prefix: str, mode: str) -> None:
    """A lock_timeout given in the connect arguments bounds the allocation's wait."""
    connect_args: dict[str, Any] = (
        {"server_settings": {"lock_timeout": "200ms"}}
        if mode == "async"
        else {"options": "-c lock_timeout=200ms"}
    )
    engine = _pg_engine(postgres_url, mode, **connect_args)
    use_cases = idmanager.connect(engine)
    locker = sa.create_engine(sync_url(postgres_url), poolclass=sa.pool.NullPool)
    try:
        await _resolve(use_cases.allocate(prefix))
        with locker.begin() as connection:
            connection.execute(
                sa.text("SELECT 1 FROM id_managers WHERE prefix = :p FOR UPDATE"), {"p": prefix}
            )
            with pytest.raises(BusyError):
                await _resolve(use_cases.allocate(prefix))
        # A lock timeout leaves the connection usable: the next allocation goes on.
        assert (await _resolve(use_cases.allocate(prefix)))[0].endswith("0002")
    finally:
        locker.dispose()
        await _resolve(engine.dispose())


async def test_asyncpg_without_a_statement_cache_sends_unnamed_statements(
    postgres_url: str, prefix: str
) -> None:
    """pgbouncer in transaction mode: no statement prepared by name on the server."""
    traced = Traced(
        "postgresql",
        True,
        postgres_url,
        connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0},
    )
    engine = traced.engine
    use_cases = idmanager.connect(engine)
    try:
        await use_cases.allocate(prefix)
        async with traced.received() as seen:
            assert (await use_cases.allocate(prefix))[0].endswith("0002")
    finally:
        await engine.dispose()
    assert len(seen) == 1 and seen[0].startswith("UPDATE id_managers"), seen
    assert traced.logged[0].startswith("execute <unnamed>: UPDATE"), traced.logged


def _sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'direct.db'}"
    idmanager.migrate(url)
    return url


def test_sqlite_threads_allocate_on_connections_of_their_own(tmp_path: Path, prefix: str) -> None:
    engine = idmanager.create_engine(_sqlite_url(tmp_path))
    use_cases = idmanager.connect(engine)
    issued: list[str] = []
    own: list[sqlite3.Connection] = []
    disposed = threading.Event()

    def work() -> None:
        issued.extend(use_cases.allocate(prefix)[0] for _ in range(50))
        local = use_cases.transactions.direct.local
        own.append(local.pinned.driver)
        disposed.wait(10)  # alive until the engine is disposed of: its connection too

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    while len(own) < 4 and any(t.is_alive() for t in threads):
        threading.Event().wait(0.01)
    assert len(set(issued)) == len(issued) == 200
    assert len({id(c) for c in own}) == 4
    for connection in own:  # made by the engine: its connect hook's settings
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA busy_timeout").fetchone() == (30_000,)
        assert connection.isolation_level is None
    assert engine.pool.checkedout() == 0
    engine.dispose()  # closes them
    disposed.set()
    for thread in threads:
        thread.join()
    for connection in own:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


def test_sqlite_an_engine_made_elsewhere_keeps_its_transactions(
    tmp_path: Path, prefix: str
) -> None:
    """Allocations commit on a plain engine too; its sessions still roll back."""
    engine = sa.create_engine(_sqlite_url(tmp_path))
    use_cases = idmanager.connect(engine)
    try:
        assert use_cases.allocate(prefix)[0].endswith("0001")
        assert use_cases.allocate(prefix)[0].endswith("0002")
        with Session(engine) as session:
            assert idmanager.IdGeneratorUtil.generate_id(prefix, session).endswith("0003")
            session.rollback()
        assert use_cases.allocate(prefix)[0].endswith("0003")  # given out again
    finally:
        engine.dispose()


async def test_aiosqlite_allocates_on_one_connection_of_its_own(
    tmp_path: Path, prefix: str
) -> None:
    engine = idmanager.create_async_engine(_sqlite_url(tmp_path))
    use_cases = idmanager.connect(engine)
    batches = await asyncio.gather(*(use_cases.allocate(prefix, 3) for _ in range(20)))
    issued = [i for batch in batches for i in batch]
    assert len(set(issued)) == len(issued) == 60
    own = use_cases.transactions.direct.own
    assert own is not None and engine.sync_engine.pool.checkedout() == 0
    await engine.dispose()  # closes it: its worker thread ends
    assert own.fairy is None
    await asyncio.sleep(0.1)
    assert not own.driver._thread.is_alive()
