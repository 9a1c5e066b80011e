"""The allocation in the caller's transaction, and the ORM's write at commit, on the DB-API cursor
(``direct.allocate_on_cursor``, ``direct.execute_on_cursor``).

They bypass SQLAlchemy's ``Connection.execute``, so what it did for them is checked here: the
statement joins the caller's transaction (a rollback takes the number back), an engine whose
statements are logged or listened to keeps SQLAlchemy's path, a lost connection is an outage
and is thrown away, a cancelled statement's connection is never reused, and the ORM's numbers
are written to composite keys, one row or many. The statements are counted where the database
receives them (``harness.Traced``): a listener would change the path.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import nullcontext
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Db, database_with, resolve
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import idmanager
from idmanager import IdGeneratorUtil, StorageError
from idmanager.infrastructure import repository
from idmanager.infrastructure.database import sync_url
from idmanager.orm import install, numbered


class Base(DeclarativeBase):
    pass


class Line(Base):
    """Numbered at commit on a composite primary key (two parameters besides the number)."""

    __tablename__ = "cursor_lines"

    order_no: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    line_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    number: Mapped[str | None] = mapped_column(
        String(300), unique=True, info=numbered("LIN", at_commit=True)
    )


class Ticket(Base):
    """Numbered at commit on a key SQLAlchemy converts for the driver (both parts are text
    to SQLite)."""

    __tablename__ = "cursor_tickets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    opened: Mapped[datetime] = mapped_column(
        primary_key=True, default=lambda: datetime(2026, 11, 30, 9, 30)
    )
    number: Mapped[str | None] = mapped_column(
        String(300), unique=True, info=numbered("TIK", at_commit=True)
    )


@pytest.fixture
async def tables(backend: str, mode: str, databases: Any) -> AsyncIterator[Db]:
    """A harness on this module's database of ``backend``, with its table."""
    db = Db(backend, mode, database_with(databases, backend, Base.metadata))
    yield db
    await db.dispose()


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each allocation that runs on the cursor (its prefix)."""
    calls: list[str] = []
    real = repository.allocate_on_cursor

    def spy(connection: Any, scope: str, prefix: str, count: int) -> Any:
        calls.append(prefix)
        return real(connection, scope, prefix, count)

    monkeypatch.setattr(repository, "allocate_on_cursor", spy)
    return calls


def _sessions(engine: Any) -> Any:
    if isinstance(engine, sa.Engine):
        return sessionmaker(engine, expire_on_commit=False)
    return async_sessionmaker(engine, expire_on_commit=False)


async def _generate(session: Session | AsyncSession, prefix: str) -> str:
    return str(await resolve(IdGeneratorUtil.generate_id(prefix, session)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_caller_s_allocation_runs_on_the_cursor_in_its_transaction(
    db: Db, prefix: str, spied: list[str]
) -> None:
    await resolve(db.use_cases().allocate(prefix))  # registered: AAA0001 issued
    spied.clear()
    async with db.session() as h:
        assert await _generate(h.session, prefix) == f"{prefix}-AAA0002"
        await h.rollback()  # the number goes back
    async with db.session() as h:
        assert await _generate(h.session, prefix) == f"{prefix}-AAA0002"
        await h.commit()
    assert spied == [prefix, prefix]
    assert db.peek(prefix) == 2


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_an_engine_whose_statements_are_watched_keeps_sqlalchemy_s_path(
    db: Db, prefix: str, spied: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Tracing (a cursor listener) and ``echo`` see the allocation statement."""
    await resolve(db.use_cases().allocate(prefix))
    spied.clear()
    async with db.session() as h:
        with db.statements() as seen:
            assert await _generate(h.session, prefix) == f"{prefix}-AAA0002"
        await h.commit()
    assert [s for s in seen if s.startswith("UPDATE id_managers")], seen
    db.sync_engine.echo = True
    try:
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            async with db.session() as h:
                assert await _generate(h.session, prefix) == f"{prefix}-AAA0003"
                await h.commit()
    finally:
        db.sync_engine.echo = False
    assert any("UPDATE id_managers" in r.getMessage() for r in caplog.records)
    assert spied == []


def _lines(order_no: int, count: int) -> list[Line]:
    return [Line(order_no=order_no, line_no=n) for n in range(1, count + 1)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("count", [1, 250])
async def test_orm_numbers_written_on_the_cursor_to_a_composite_key(
    tables: Db, count: int, spied: list[str]
) -> None:
    """One allocation, then only the write of the numbers (one row: execute; more: the
    driver's executemany), as the database received them. On PostgreSQL one row's number is
    allocated and written by one statement."""
    if tables.peek("LIN") is None:  # its first use would create it: another statement
        await resolve(tables.use_cases().run(lambda s: s.configure_prefix("LIN")))
    async with tables.traced() as traced:
        install(sessions := _sessions(traced.engine))
        order_no = uuid.uuid4().int % 10**12
        prefix_before = tables.peek("LIN") or 0
        session = sessions()
        try:
            lines = _lines(order_no, count)
            session.add_all(lines)
            await resolve(session.flush())
            async with traced.received() as seen:
                await resolve(session.commit())
        finally:
            await resolve(session.close())
    allocating = [i for i, s in enumerate(seen) if "id_managers" in s]
    assert len(allocating) == 1, seen
    after = [s for s in seen[allocating[0] + 1 :] if s.strip().upper() != "COMMIT"]
    folded = tables.backend == "postgresql" and count == 1
    if folded:
        assert "UPDATE cursor_lines" in seen[allocating[0]] and not after, seen
    else:
        assert after and all(s.startswith("UPDATE cursor_lines") for s in after), after
    expected = [idmanager.format_id("LIN", prefix_before + n) for n in range(1, count + 1)]
    assert [line.number for line in lines] == expected
    with tables.reader.connect() as connection:
        stored = connection.execute(
            sa.select(Line.__table__.c.line_no, Line.__table__.c.number)
            .where(Line.__table__.c.order_no == order_no)
            .order_by(Line.__table__.c.line_no)
        ).all()
    assert [number for _line, number in stored] == expected
    assert spied == ([] if folded else ["LIN"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("count", [1, 3])
async def test_orm_numbers_written_on_the_cursor_to_a_key_the_driver_gets_converted(
    tables: Db, count: int
) -> None:
    """A ``Uuid`` and a ``DateTime`` in the primary key are text to SQLite: the write's
    parameters are converted as SQLAlchemy would, or the UPDATE would match no row (or fail to
    bind)."""
    session = tables.sessions()
    install(session)
    try:
        tickets = [Ticket() for _ in range(count)]
        session.add_all(tickets)
        await resolve(session.commit())
    finally:
        await resolve(session.close())
    numbers = [t.number for t in tickets]
    assert all(n is not None and n.startswith("TIK-") for n in numbers), numbers
    table = Ticket.__table__
    with tables.reader.connect() as connection:
        stored = dict(
            connection.execute(
                sa.select(table.c.id, table.c.number).where(table.c.id.in_([t.id for t in tickets]))
            ).all()
        )
    assert stored == {t.id: t.number for t in tickets}


def _admin(url: str, sql: str, **params: Any) -> None:
    engine = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(sql), params)
    engine.dispose()


async def _backend_pid(session: Session | AsyncSession) -> int:
    result = await resolve(session.execute(sa.text("SELECT pg_backend_pid()")))
    return int(result.scalar_one())


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("watched", [False, True], ids=["cursor", "sqlalchemy"])
async def test_a_connection_lost_in_the_caller_s_transaction_is_an_outage_thrown_away(
    db: Db, prefix: str, spied: list[str], watched: bool
) -> None:
    await resolve(db.use_cases().allocate(prefix))
    spied.clear()
    with db.statements() if watched else nullcontext():
        async with db.session() as h:
            pid = await _backend_pid(h.session)
            _admin(db.url, "SELECT pg_terminate_backend(:pid)", pid=pid)
            await asyncio.sleep(0.1)
            with pytest.raises(StorageError, match="Database unavailable"):
                await _generate(h.session, prefix)
            await h.rollback()  # the caller's step after a failure: it works
        # The dead connection is not handed out again: the next transaction allocates.
        async with db.session() as h:
            assert await _generate(h.session, prefix) == f"{prefix}-AAA0002"
            assert await _backend_pid(h.session) != pid
            await h.commit()
    assert spied == ([] if watched else [prefix, prefix])


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("mode", ["async"])
async def test_a_cancelled_allocation_in_the_caller_s_transaction_leaves_no_connection(
    db: Db, prefix: str
) -> None:
    """Cancelled while it waits for the row's lock: mid-statement, the connection's state is
    unknown, so it is thrown away, never reused."""
    await resolve(db.use_cases().allocate(prefix))
    locker = sa.create_engine(sync_url(db.url), poolclass=sa.pool.NullPool)
    try:
        with locker.begin() as connection:
            connection.execute(
                sa.text("SELECT 1 FROM id_managers WHERE prefix = :p FOR UPDATE"), {"p": prefix}
            )
            async with db.session() as h:
                pid = await _backend_pid(h.session)
                waiting = asyncio.create_task(_generate(h.session, prefix))
                await asyncio.sleep(0.3)  # the statement waits for the row lock
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                await h.rollback()
        async with db.session() as h:
            assert await _generate(h.session, prefix) == f"{prefix}-AAA0002"
            assert await _backend_pid(h.session) != pid
            await h.commit()
    finally:
        locker.dispose()
