"""Conflicts in the caller's transaction, MySQL's lone allocation, and multi-host PostgreSQL,
on the shared servers (the replicated clusters are in tests/reliability/test_replication.py).

A conflict found at the caller's commit is made deterministic with PostgreSQL's serializable
isolation: two transactions that each read what the other writes cannot both commit, and the
second learns it at COMMIT, as a Galera transaction does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import idmanager
from idmanager import IdGeneratorUtil, PrefixInactiveError, TransactionConflictError
from idmanager.infrastructure.database import sync_url
from idmanager.orm import install, numbered

if TYPE_CHECKING:
    from conftest import Databases


@pytest.fixture(scope="module")
def pg_url(databases: Databases) -> str:
    """A PostgreSQL database of this module's: its tables stay out of the shared one."""
    return databases.create("postgresql")


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "conflict_tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(40), info=numbered("TKT"))


def _serializable(url: str) -> sa.Engine:
    engine = idmanager.create_engine(url, isolation_level="SERIALIZABLE")
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS conflict_marks (n int)")
    return engine


def _write_skew(first: Session, second: Session) -> None:
    """Make ``second`` lose at commit: each reads what the other writes, ``first`` commits."""
    first.execute(sa.text("SELECT count(*) FROM conflict_tickets"))
    second.execute(sa.text("SELECT count(*) FROM conflict_marks"))
    first.execute(sa.text("INSERT INTO conflict_marks VALUES (1)"))


def test_a_conflict_at_the_callers_commit_is_a_conflict_error(pg_url: str) -> None:
    engine = _serializable(pg_url)
    factory = sessionmaker(engine)
    install(factory)
    try:
        with factory() as first, factory() as second:
            _write_skew(first, second)
            ticket = Ticket()
            second.add(ticket)
            second.flush()  # numbered, in second's transaction
            taken = ticket.number
            first.commit()
            try:
                second.commit()
            except TransactionConflictError as exc:
                assert type(exc.__cause__).__name__ == "SerializationFailure"
            else:
                raise AssertionError("the second commit should have lost")
            second.rollback()
            assert ticket.number is None  # taken back, and handed out again below
            again = Ticket()
            second.add(again)
            second.commit()
            assert again.number == taken
    finally:
        engine.dispose()


def test_the_same_through_the_facade_and_an_async_session(pg_url: str, prefix: str) -> None:
    async def run() -> None:
        engine = idmanager.create_async_engine(pg_url, isolation_level="SERIALIZABLE")
        sync = _serializable(pg_url)
        sync.dispose()
        sessions = async_sessionmaker(engine)
        try:
            async with sessions() as first, sessions() as second:
                await first.execute(sa.text("SELECT count(*) FROM conflict_tickets"))
                await second.execute(sa.text("SELECT count(*) FROM conflict_marks"))
                await first.execute(sa.text("INSERT INTO conflict_marks VALUES (2)"))
                taken = await IdGeneratorUtil.generate_id(prefix, second)
                await second.execute(
                    sa.text("INSERT INTO conflict_tickets (number) VALUES (:n)"), {"n": taken}
                )
                await first.commit()
                try:
                    await second.commit()
                except TransactionConflictError:
                    pass
                else:
                    raise AssertionError("the second commit should have lost")
                await second.rollback()
                assert await IdGeneratorUtil.generate_id(prefix, second) == taken
                await second.commit()
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_mysql_allocates_in_one_statement_alone(mariadb_url: str, prefix: str) -> None:
    engine = idmanager.create_engine(mariadb_url, pool_size=1, max_overflow=0)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    use_cases = idmanager.connect(engine)
    try:
        other = f"{prefix}O"
        use_cases.allocate(other)  # leaves LAST_INSERT_ID set on the one connection
        assert use_cases.allocate(prefix)[0].endswith("0001")
        statements.clear()
        assert use_cases.allocate(prefix)[0].endswith("0002")
        # The allocation alone (no BEGIN, no COMMIT), then a plain read of the row's format.
        assert [s.split()[0] for s in statements] == ["UPDATE", "SELECT"]
        assert "last_insert_id" in statements[0].lower()
        use_cases.run(lambda s: s.deactivate_prefix(prefix))
        use_cases.allocate(other)
        try:
            use_cases.allocate(prefix)
        except PrefixInactiveError:
            pass
        else:
            raise AssertionError("an inactive prefix must refuse, whatever LAST_INSERT_ID holds")
        # The caller's transaction still gets a transaction, begun explicitly.
        statements.clear()
        with Session(engine) as session:
            IdGeneratorUtil.generate_id(other, session)
            session.rollback()
        assert statements[0] == "BEGIN"
    finally:
        engine.dispose()


def test_a_mysql_engine_made_elsewhere_allocates_in_a_transaction(
    mariadb_url: str, prefix: str
) -> None:
    engine = sa.create_engine(sync_url(mariadb_url))
    try:
        first = IdGeneratorUtil.generate_id(prefix, engine)
        second = IdGeneratorUtil.generate_id(prefix, engine)
        assert (first[-4:], second[-4:]) == ("0001", "0002")
    finally:
        engine.dispose()


def test_a_pooled_connection_to_a_read_only_server_is_dropped(
    postgres_url: str, prefix: str
) -> None:
    # The shared server listed twice: a multi-host URL. A session made read-only stands for
    # a server fenced off (or demoted) since the connection was opened.
    url = sa.engine.make_url(postgres_url)
    host = f"{url.host}:{url.port or 5432}"
    multi = url.set(host=None, port=None).update_query_pairs([("host", host), ("host", host)])
    engine = idmanager.create_engine(multi, pool_size=1, max_overflow=0)
    use_cases = idmanager.connect(engine)
    try:
        use_cases.allocate(prefix)
        with engine.connect() as connection:
            connection.exec_driver_sql("SET SESSION default_transaction_read_only = on")
            connection.commit()
        try:
            use_cases.allocate(prefix)
        except idmanager.StorageError as exc:
            assert "read-only" in str(exc)
        else:
            raise AssertionError("the read-only connection should have refused the write")
        assert use_cases.allocate(prefix)[0].endswith("0002")  # a new connection
    finally:
        engine.dispose()
