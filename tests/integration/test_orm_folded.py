"""The ORM's numbering at commit on PostgreSQL: one row's ID allocated and written by ONE
statement (``statements.allocate_and_write``), PostgreSQL writing the ID as Python would.

The sequence's row stays locked from the allocation to COMMIT; with the write in the same
statement, one round trip less holds it. PostgreSQL formats the ID (``formatted_ids``): that
is checked against ``format_id`` for every format, at the edges of letter blocks and widths.
Where the letters grow past the format's width, PostgreSQL writes nothing and Python writes
the ID, as the two-statement path did.
"""

from __future__ import annotations

import asyncio
import random
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Db, numbering, resolve
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import idmanager
from idmanager import BusyError, IdFormat, ServiceOptions, format_id
from idmanager.domain.format import MAX_ORDINAL
from idmanager.infrastructure.database import sync_url
from idmanager.infrastructure.models import IdempotencyModel, IdManagerAuditModel, IdManagerModel
from idmanager.infrastructure.statements import formatted_ids
from idmanager.orm import install, numbered

POSTGRESQL = pytest.mark.parametrize("backend", ["postgresql"])


class Base(DeclarativeBase):
    pass


class Receipt(Base):
    """Numbered at commit, one sequence per tenant."""

    __tablename__ = "folded_receipts"
    __table_args__ = (sa.UniqueConstraint("tenant", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    number: Mapped[str | None] = mapped_column(
        String(300), info=numbered("RCP", at_commit=True, scope_from="tenant")
    )


@pytest.fixture
async def orm(backend: str, mode: str, databases: Any) -> AsyncIterator[Db]:
    """A harness on this module's database, its sessions numbering the models."""
    async with numbering(backend, mode, databases, Base.metadata) as db:
        yield db


async def configured(db: Db, tenant: str, fmt: IdFormat, latest: int) -> None:
    """Register RCP for ``tenant`` in ``fmt``, its latest ID at ordinal ``latest``."""
    latest_id = format_id("RCP", latest, fmt)
    await resolve(
        db.use_cases().run(
            lambda s: s.configure_prefix("RCP", scope=tenant, fmt=fmt, latest_id=latest_id)
        )
    )


async def commit_receipts(db: Db, tenant: str, count: int) -> list[str | None]:
    """Commit ``count`` receipts, one transaction each; return their numbers."""
    numbers = []
    for _ in range(count):
        async with db.session() as h:
            receipt = Receipt(tenant=tenant)
            h.session.add(receipt)
            await h.commit()
        numbers.append(receipt.number)
    return numbers


def stored(db: Db, tenant: str) -> list[str]:
    table = Receipt.__table__
    with db.reader.connect() as connection:
        query = sa.select(table.c.number).where(table.c.tenant == tenant).order_by(table.c.id)
        return list(connection.scalars(query))


# --- the format, written by PostgreSQL ------------------------------------------------------


def _ordinals(fmt: IdFormat, rng: random.Random) -> list[int]:
    """The edges of a format's first letter widths, and random ordinals between them."""
    per = fmt.per_block
    found = {1, 2, per, per + 1, 2 * per, MAX_ORDINAL, rng.randint(1, MAX_ORDINAL)}
    if fmt.letter_width:
        last_fixed = per * 26**fmt.letter_width  # ZZZ9999: the last ID at the format's width
        found |= {last_fixed - 1, last_fixed, last_fixed + 1, rng.randint(1, last_fixed)}
    else:
        found |= {10**fmt.digit_width, 10**fmt.digit_width + 1, rng.randint(1, 10 * per)}
    return sorted(n for n in found if 1 <= n <= MAX_ORDINAL)


def test_postgresql_writes_each_id_as_format_id_does(postgres_url: str) -> None:
    """Every separator, letter width (0–8) and digit width (1–12), at the edges of blocks
    and widths: the same ID as ``format_id``, or NULL exactly where the letters have grown
    past the format's width."""
    rng = random.Random(20261130)
    engine = sa.create_engine(sync_url(postgres_url), poolclass=sa.pool.NullPool)
    checked = 0
    with engine.connect() as connection:
        for separator in ("", "-", ".", "/", ":", "#"):
            for letter_width in range(9):
                for digit_width in range(1, 13):
                    fmt = IdFormat(separator, letter_width, digit_width)
                    ordinals = _ordinals(fmt, rng)
                    source = sa.select(
                        sa.func.unnest(sa.literal(ordinals, sa.ARRAY(sa.BigInteger))).label(
                            "last_value"
                        ),
                        sa.literal(separator, String).label("separator"),
                        sa.literal(letter_width, sa.SmallInteger).label("letter_width"),
                        sa.literal(digit_width, sa.SmallInteger).label("digit_width"),
                    ).subquery()
                    query = formatted_ids(source, sa.literal("PFX_9", String))
                    got = list(connection.scalars(query))
                    expected = []
                    for n in ordinals:
                        grown = letter_width and (n - 1) // fmt.per_block >= 26**letter_width
                        expected.append(None if grown else format_id("PFX_9", n, fmt))
                    assert got == expected, (fmt, ordinals)
                    checked += len(ordinals)
    engine.dispose()
    assert checked > 1000


# --- the ORM --------------------------------------------------------------------------------


@POSTGRESQL
async def test_one_statement_allocates_and_writes_a_row_s_number(orm: Db, scope: str) -> None:
    await configured(orm, scope, IdFormat(), 41)
    with orm.statements() as seen, warnings.catch_warnings():
        warnings.simplefilter("error")  # SQLAlchemy's FROM linter: no cartesian product
        numbers = await commit_receipts(orm, scope, 2)
    assert numbers == ["RCP-AAA0042", "RCP-AAA0043"]
    assert stored(orm, scope) == numbers
    sequences = [s for s in seen if "id_managers" in s]
    # The engine is watched (a listener), so the statement went through SQLAlchemy.
    assert len(sequences) == 2 and all("UPDATE folded_receipts" in s for s in sequences)
    assert not [s for s in seen if s.startswith("UPDATE folded_receipts")], seen


@POSTGRESQL
@pytest.mark.parametrize(
    ("fmt", "latest", "expected"),
    [
        # The last IDs of one letter, then two letters: Python writes those.
        (IdFormat("-", 1, 1), 26 * 9 - 1, ["RCP-Z9", "RCP-AA1", "RCP-AA2"]),
        (IdFormat("", 3, 4), 26**3 * 9999 - 1, ["RCPZZZ9999", "RCPAAAA0001", "RCPAAAA0002"]),
        # Digits only grow past their width, written by PostgreSQL.
        (IdFormat(".", 0, 2), 98, ["RCP.99", "RCP.100", "RCP.101"]),
    ],
)
async def test_letters_past_the_format_s_width_are_written_all_the_same(
    orm: Db, scope: str, fmt: IdFormat, latest: int, expected: list[str]
) -> None:
    await configured(orm, scope, fmt, latest)
    with orm.statements() as seen:
        numbers = await commit_receipts(orm, scope, 3)
    assert numbers == expected
    assert stored(orm, scope) == expected
    assert orm.peek("RCP", scope) == latest + 3
    # Past the width PostgreSQL writes nothing: the number's own UPDATE follows.
    written_apart = [s for s in seen if s.startswith("UPDATE folded_receipts")]
    assert len(written_apart) == (2 if fmt.letter_width else 0), seen


@POSTGRESQL
async def test_a_first_use_creates_the_sequence_and_an_inactive_one_refuses(
    orm: Db, scope: str
) -> None:
    assert await commit_receipts(orm, scope, 2) == ["RCP-AAA0001", "RCP-AAA0002"]
    await resolve(
        orm.use_cases().run(lambda s: s.configure_prefix("RCP", scope=scope, is_active=False))
    )
    async with orm.session() as h:
        h.session.add(Receipt(tenant=scope))
        with pytest.raises(idmanager.PrefixInactiveError):
            await h.commit()
        await h.rollback()
    assert stored(orm, scope) == ["RCP-AAA0001", "RCP-AAA0002"]
    assert orm.peek("RCP", scope) == 2


@POSTGRESQL
async def test_the_lock_timeout_bounds_the_wait_at_commit(orm: Db, scope: str) -> None:
    """With ``lock_timeout_ms``, a commit that finds the sequence held by another transaction
    gives up after that long (``BusyError``), and nothing is written."""
    await commit_receipts(orm, scope, 1)
    sessions = type(orm.sessions)(orm.engine, expire_on_commit=False)  # numbered on its own
    install(sessions, ServiceOptions(lock_timeout_ms=300))
    impatient = sessions()
    async with orm.session() as holder:
        assert await holder.service.generate_id("RCP", scope=scope) == "RCP-AAA0002"
        try:
            impatient.add(Receipt(tenant=scope))
            began = time.monotonic()
            with pytest.raises(BusyError):
                await resolve(impatient.commit())
            waited = time.monotonic() - began
            await resolve(impatient.rollback())
        finally:
            await resolve(impatient.close())
        await holder.commit()
    assert 0.25 <= waited < 2.0, waited
    assert await commit_receipts(orm, scope, 1) == ["RCP-AAA0003"]


@POSTGRESQL
@pytest.mark.parametrize("mode", ["async"])
async def test_concurrent_commits_share_out_every_number_once(orm: Db, scope: str) -> None:
    """16 tasks committing one receipt at a time, a fifth of them rolled back: the committed
    numbers are unique and have no gaps."""
    await commit_receipts(orm, scope, 1)  # create the sequence first
    rng = random.Random(7)

    async def task() -> None:
        for _ in range(15):
            async with orm.sessions() as session:
                session.add(Receipt(tenant=scope))
                await session.flush()
                await asyncio.sleep(rng.random() / 500)
                if rng.random() < 0.2:
                    await session.rollback()
                else:
                    await session.commit()

    await asyncio.gather(*(task() for _ in range(16)))
    numbers = stored(orm, scope)
    assert len(numbers) == len(set(numbers))
    assert sorted(numbers) == [format_id("RCP", n) for n in range(1, len(numbers) + 1)]


@POSTGRESQL
@pytest.mark.parametrize("mode", ["sync"])
async def test_sequences_on_another_engine_are_allocated_and_written_apart(
    orm: Db, postgres_url: str, scope: str
) -> None:
    """A session whose binds put IdManager's tables in another database: the allocation goes
    there, the write of the number here, two statements (one cannot span two databases)."""
    await configured(orm, scope, IdFormat(), 500)  # a decoy: the same sequence, wrong database
    elsewhere = idmanager.create_engine(postgres_url)
    idm_models = (IdManagerModel, IdManagerAuditModel, IdempotencyModel)
    binds: dict[Any, Any] = {model: elsewhere for model in idm_models}
    sessions = sessionmaker(binds={**binds, Receipt: orm.engine}, expire_on_commit=False)
    install(sessions)
    try:
        for _ in range(2):
            with sessions() as session:
                session.add(receipt := Receipt(tenant=scope))
                session.commit()
    finally:
        elsewhere.dispose()
    assert receipt.number == "RCP-AAA0002"
    assert stored(orm, scope) == ["RCP-AAA0001", "RCP-AAA0002"]
    assert orm.peek("RCP", scope) == 500  # the decoy in the documents' database: untouched
    with sa.create_engine(sync_url(postgres_url), poolclass=sa.pool.NullPool).connect() as c:
        query = "SELECT last_value FROM id_managers WHERE scope = :s AND prefix = 'RCP'"
        assert c.execute(sa.text(query), {"s": scope}).scalar() == 2
