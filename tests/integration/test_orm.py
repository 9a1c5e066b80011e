"""IDs assigned by the ORM (``idmanager.orm``) on every backend, with async and sync sessions.

The models live in a database of their own per backend, so that the session's shared
databases keep exactly the migrated schema.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Db, numbering, resolve
from sqlalchemy import String, UniqueConstraint
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from idmanager import InvalidInputError, InvalidPrefixError, PrefixInactiveError
from idmanager.infrastructure.database import sync_url
from idmanager.orm import install, numbered

DAY = date(2026, 3, 14)


class Base(DeclarativeBase):
    pass


class Customer(Base):
    """The ID is (part of) the primary key: numbered at flush, one sequence per tenant."""

    __tablename__ = "orm_customers"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(
        String(300), primary_key=True, info=numbered("CUS", scope_from="tenant")
    )
    name: Mapped[str] = mapped_column(String(64), default="")


class Invoice(Base):
    """A document number beside a surrogate key: numbered at commit, per tenant and year."""

    __tablename__ = "orm_invoices"
    __table_args__ = (UniqueConstraint("tenant", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    issued_on: Mapped[date | None]
    number: Mapped[str | None] = mapped_column(
        String(300),
        info=numbered("INV{YYYY}", at_commit=True, scope_from="tenant", date_from="issued_on"),
    )


class Order(Base):
    """Numbered at flush beside a surrogate key; scope and date from functions."""

    __tablename__ = "orm_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    company_id: Mapped[int] = mapped_column(sa.BigInteger)
    ordered_at: Mapped[datetime]
    number: Mapped[str | None] = mapped_column(
        String(300),
        info=numbered(
            "SO{YY}{MM}", scope_from=lambda o: o.company_id, date_from=lambda o: o.ordered_at
        ),
    )


class Vendor(Base):
    """The spec's example: a literal prefix on a single-column primary key."""

    __tablename__ = "orm_vendors"

    id: Mapped[str] = mapped_column(String(300), primary_key=True, info=numbered("VEN"))


def ordinals(ids: list[str | None], prefix: str) -> list[int]:
    """Return the sorted ordinals of IDs ``PREFIX-AAA0001`` … (first letter block)."""
    assert all(i is not None and i.startswith(f"{prefix}-AAA") for i in ids), ids
    return sorted(int(str(i)[-4:]) for i in ids)


def one_statement(db: Db) -> int:
    # MySQL/MariaDB have no UPDATE with RETURNING: allocation there is update + locking read.
    return 2 if db.backend == "mariadb" else 1


async def registered(db: Db, tenant: str, *prefixes: str) -> None:
    """Register sequences before a test counts statements: the first use costs more (it
    creates the sequence and audits that)."""
    for name in prefixes:
        await resolve(
            db.use_cases().run(lambda s, name=name: s.configure_prefix(name, scope=tenant))
        )


@pytest.fixture
async def orm(backend: str, mode: str, databases: Any) -> AsyncIterator[Db]:
    """A harness on this module's database of ``backend``, its sessions numbering models."""
    async with numbering(backend, mode, databases, Base.metadata) as db:
        yield db


@pytest.fixture
def tenant() -> str:
    """A tenant (scope) no other test uses: its sequences start at AAA0001."""
    return f"t-{uuid.uuid4().hex[:12]}"


def committed(db: Db, model: type[Base], column: str, tenant: str) -> list[Any]:
    """Return the committed values of ``model.column`` for a tenant, as another connection sees."""
    with db.reader.connect() as connection:
        table = model.__table__
        rows = connection.execute(sa.select(table.c[column]).where(table.c.tenant == tenant))
        return [row[0] for row in rows]


def touching_sequences(statements: list[str]) -> list[str]:
    return [s for s in statements if "id_managers" in s]


def last(statements: list[str], test: Callable[[str], bool]) -> int:
    """Return the position of the last statement that passes ``test``."""
    return max(i for i, s in enumerate(statements) if test(s))


def allocating(statement: str) -> bool:
    return "id_managers" in statement


# --- early: at flush --------------------------------------------------------------------------


async def test_the_id_is_the_primary_key_assigned_before_the_insert(
    fresh_db: Db, backend: str
) -> None:
    engine = sa.create_engine(sync_url(fresh_db.url), poolclass=sa.pool.NullPool)
    Base.metadata.create_all(engine)
    engine.dispose()
    install(fresh_db.sessions)
    async with fresh_db.session() as h:
        vendors = [Vendor(), Vendor()]
        h.session.add_all(vendors)
        with fresh_db.statements() as seen:
            await resolve(h.session.flush())
        assert [v.id for v in vendors] == ["VEN-AAA0001", "VEN-AAA0002"]
        assert last(seen, allocating) < last(seen, lambda s: s.startswith("INSERT INTO orm_vend"))
        await h.commit()
    async with fresh_db.session() as h:
        found = await resolve(h.session.get(Vendor, "VEN-AAA0002"))
        assert found is not None
    assert fresh_db.peek("VEN") == 2


async def test_a_flush_of_10000_objects_is_one_allocation(orm: Db, tenant: str) -> None:
    await registered(orm, tenant, "CUS")
    async with orm.session() as h:
        await h.begin()
        customers = [Customer(tenant=tenant) for _ in range(10_000)]
        h.session.add_all(customers)
        with orm.statements() as seen:
            await resolve(h.session.flush())
        await h.commit()
    assert len(touching_sequences(seen)) == one_statement(orm), touching_sequences(seen)
    # Numbered in the order the objects were added.
    assert [c.id for c in customers[:2]] == ["CUS-AAA0001", "CUS-AAA0002"]
    assert customers[-1].id == "CUS-AAB0001"
    assert len(committed(orm, Customer, "id", tenant)) == 10_000
    assert orm.peek("CUS", tenant) == 10_000


async def test_a_value_given_by_the_caller_is_kept(orm: Db, tenant: str) -> None:
    async with orm.session() as h:
        given = Customer(tenant=tenant, id="LEGACY-1")
        new = Customer(tenant=tenant)
        h.session.add_all([given, new])
        await h.commit()
    assert (given.id, new.id) == ("LEGACY-1", "CUS-AAA0001")


async def test_each_scope_is_its_own_sequence(orm: Db, tenant: str) -> None:
    other = tenant + "-b"
    await registered(orm, tenant, "CUS")
    await registered(orm, other, "CUS")
    async with orm.session() as h:
        await h.begin()
        customers = [Customer(tenant=t) for t in (tenant, other, tenant)]
        h.session.add_all(customers)
        with orm.statements() as seen:
            await resolve(h.session.flush())
        await h.commit()
    assert [c.id for c in customers] == ["CUS-AAA0001", "CUS-AAA0001", "CUS-AAA0002"]
    assert len(touching_sequences(seen)) == 2 * one_statement(orm)


async def test_scope_and_date_from_functions(orm: Db) -> None:
    company = uuid.uuid4().int >> 80  # fits a BIGINT
    async with orm.session() as h:
        orders = [
            Order(company_id=company, ordered_at=datetime(2026, 1, 31, 23, 59)),
            Order(company_id=company, ordered_at=datetime(2026, 2, 1)),
            Order(company_id=company, ordered_at=datetime(2026, 1, 2)),
        ]
        h.session.add_all(orders)
        await resolve(h.session.flush())
        await h.commit()
    assert [o.number for o in orders] == ["SO2601-AAA0001", "SO2602-AAA0001", "SO2601-AAA0002"]
    assert orm.peek("SO2601", str(company)) == 2


# --- at commit --------------------------------------------------------------------------------


async def test_at_commit_10000_rows_are_one_allocation_and_one_update(orm: Db, tenant: str) -> None:
    await registered(orm, tenant, "INV2026")
    async with orm.session() as h:
        invoices = [Invoice(tenant=tenant, issued_on=DAY) for _ in range(10_000)]
        h.session.add_all(invoices)
        await resolve(h.session.flush())
        assert {i.number for i in invoices} == {None}
        with orm.statements() as seen:
            await h.commit()
    assert len(touching_sequences(seen)) == one_statement(orm), touching_sequences(seen)
    updates = [s for s in seen if s.startswith("UPDATE orm_invoices")]
    assert len(updates) == 1, updates
    # The sequence is locked last: after it, only the update of the numbers (and COMMIT).
    assert seen[last(seen, allocating) + 1 :] == updates
    assert (invoices[0].number, invoices[-1].number) == ("INV2026-AAA0001", "INV2026-AAB0001")
    numbers = committed(orm, Invoice, "number", tenant)
    assert len(set(numbers)) == 10_000 and set(numbers) == {i.number for i in invoices}


async def test_period_templates_follow_the_document_date(orm: Db, tenant: str) -> None:
    today = datetime.now(UTC).date()
    async with orm.session() as h:
        invoices = [
            Invoice(tenant=tenant, issued_on=date(2025, 12, 31)),
            Invoice(tenant=tenant, issued_on=date(2026, 1, 1)),
            Invoice(tenant=tenant, issued_on=None),
            Invoice(tenant=tenant, issued_on=date(2025, 6, 1)),  # back-dated
        ]
        h.session.add_all(invoices)
        await h.commit()
    assert [i.number for i in invoices] == [
        "INV2025-AAA0001",
        "INV2026-AAA0001",
        f"INV{today.year}-AAA000{2 if today.year == 2026 else 1}",
        "INV2025-AAA0002",
    ]


async def test_the_number_is_on_the_object_after_commit(orm: Db, tenant: str) -> None:
    """With expire_on_commit=False it is set on the object; otherwise a reload reads it."""
    async with orm.session() as h:
        invoice = Invoice(tenant=tenant, issued_on=DAY)
        h.session.add(invoice)
        await h.commit()
        assert invoice.number == "INV2026-AAA0001"
        h.session.expire(invoice)
        await resolve(h.session.refresh(invoice))
        assert invoice.number == "INV2026-AAA0001"


async def test_mixing_early_and_at_commit_models_in_one_session(orm: Db, tenant: str) -> None:
    await registered(orm, tenant, "CUS", "INV2026")
    async with orm.session() as h:
        customer = Customer(tenant=tenant)
        invoice = Invoice(tenant=tenant, issued_on=DAY)
        h.session.add_all([customer, invoice])
        await resolve(h.session.flush())
        assert (customer.id, invoice.number) == ("CUS-AAA0001", None)
        later = Customer(tenant=tenant)
        h.session.add(later)
        with orm.statements() as seen:
            await h.commit()
    assert (later.id, invoice.number) == ("CUS-AAA0002", "INV2026-AAA0001")
    sequences = touching_sequences(seen)
    assert len(sequences) == 2 * one_statement(orm)  # CUS at the flush, INV at commit
    assert last(seen, allocating) > last(seen, lambda s: s.startswith("INSERT INTO orm_cust"))
    assert sorted(committed(orm, Customer, "id", tenant)) == ["CUS-AAA0001", "CUS-AAA0002"]


# --- rollbacks --------------------------------------------------------------------------------


async def test_rolled_back_objects_lose_their_numbers_to_the_next_commit(
    orm: Db, tenant: str
) -> None:
    async with orm.session() as h:
        lost = [Customer(tenant=tenant), Customer(tenant=tenant)]
        h.session.add_all(lost)
        await resolve(h.session.flush())
        assert [c.id for c in lost] == ["CUS-AAA0001", "CUS-AAA0002"]
        await h.rollback()
        assert [c.id for c in lost] == [None, None]
    async with orm.session() as h:  # closed without commit
        closed = Customer(tenant=tenant)
        h.session.add(closed)
        await resolve(h.session.flush())
        assert closed.id == "CUS-AAA0001"
    assert closed.id is None
    async with orm.session() as h:
        kept = [Customer(tenant=tenant), Customer(tenant=tenant)]
        h.session.add_all(kept)
        await h.commit()
    assert [c.id for c in kept] == ["CUS-AAA0001", "CUS-AAA0002"]
    assert orm.peek("CUS", tenant) == 2


async def test_a_rolled_back_savepoint_takes_back_only_its_numbers(orm: Db, tenant: str) -> None:
    async with orm.session() as h:
        outer = Customer(tenant=tenant)
        h.session.add(outer)
        await resolve(h.session.flush())
        savepoint = await resolve(h.session.begin_nested())
        inner = Customer(tenant=tenant)
        h.session.add(inner)
        await resolve(h.session.flush())
        assert (outer.id, inner.id) == ("CUS-AAA0001", "CUS-AAA0002")
        await resolve(savepoint.rollback())
        assert (outer.id, inner.id) == ("CUS-AAA0001", None)
        again = Customer(tenant=tenant)
        h.session.add(again)
        await h.commit()
    assert again.id == "CUS-AAA0002"
    assert sorted(committed(orm, Customer, "id", tenant)) == ["CUS-AAA0001", "CUS-AAA0002"]


async def test_a_commit_that_fails_after_numbering_hands_the_numbers_on(
    orm: Db, tenant: str
) -> None:
    async with orm.session() as h:
        sync_session = h.session.sync_session if orm.is_async else h.session
        invoice = Invoice(tenant=tenant, issued_on=DAY)
        h.session.add(invoice)

        def fail(session: Session) -> None:  # runs after the numbering: fails the commit
            written = session.execute(sa.select(Invoice.number).where(Invoice.id == invoice.id))
            assert written.scalar_one() == "INV2026-AAA0001"
            raise RuntimeError("commit failed")

        sa.event.listen(sync_session, "before_commit", fail)
        with pytest.raises(RuntimeError, match="commit failed"):
            await h.commit()
        await h.rollback()
        assert invoice.number is None
    async with orm.session() as h:
        retried = Invoice(tenant=tenant, issued_on=DAY)
        h.session.add(retried)
        await h.commit()
    assert retried.number == "INV2026-AAA0001"


async def test_a_failed_numbering_at_commit_must_be_rolled_back(orm: Db, tenant: str) -> None:
    async with orm.session() as h:
        await h.service.configure_prefix("INV2026", scope=tenant, is_active=False)
        await h.commit()
    async with orm.session() as h:
        h.session.add_all(
            [
                Invoice(tenant=tenant, issued_on=date(2025, 5, 1)),
                Invoice(tenant=tenant, issued_on=DAY),
            ]
        )
        with pytest.raises(PrefixInactiveError):  # after drawing INV2025-AAA0001
            await h.commit()
        with pytest.raises(PendingRollbackError, match="roll it back"):
            await h.commit()
        await h.rollback()
    async with orm.session() as h:
        invoice = Invoice(tenant=tenant, issued_on=date(2025, 5, 1))
        h.session.add(invoice)
        await h.commit()
    assert invoice.number == "INV2025-AAA0001"


# --- concurrency ------------------------------------------------------------------------------


def business_transaction(
    session: Any, tenant: str, rng: random.Random
) -> tuple[list[Any], list[Any], bool]:
    """Add a customer and 1–3 invoices; return them and whether to roll back (30%)."""
    customers = [Customer(tenant=tenant)]
    invoices = [Invoice(tenant=tenant, issued_on=DAY) for _ in range(rng.randint(1, 3))]
    session.add_all(customers + invoices)
    return customers, invoices, rng.random() < 0.3


async def test_gapless_with_30_percent_rollbacks_under_concurrency(orm: Db, tenant: str) -> None:
    workers, per_worker = 8, 12
    # Create the sequences first: waiters on a prefix whose creating transaction rolls back
    # deadlock on MariaDB (an InnoDB limit the repository documents).
    async with orm.session() as h:
        h.session.add_all([Customer(tenant=tenant), Invoice(tenant=tenant, issued_on=DAY)])
        await h.commit()
    kept: list[Any] = []
    lost: list[Any] = []
    lock = threading.Lock()

    def record(objects: list[Any], rolled_back: bool) -> None:
        with lock:
            (lost if rolled_back else kept).extend(objects)

    async def task(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_worker):
            async with orm.sessions() as session:
                customers, invoices, rollback = business_transaction(session, tenant, rng)
                await session.flush()
                await asyncio.sleep(rng.random() * 0.005)
                await (session.rollback() if rollback else session.commit())
                record(customers + invoices, rollback)

    errors: list[BaseException] = []

    def thread(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(per_worker):
                with orm.sessions() as session:
                    customers, invoices, rollback = business_transaction(session, tenant, rng)
                    session.flush()
                    session.rollback() if rollback else session.commit()
                    record(customers + invoices, rollback)
        except BaseException as exc:
            errors.append(exc)

    if orm.is_async:
        await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(workers))), 60)
    else:
        threads = [threading.Thread(target=thread, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads), errors

    assert lost, "the seeds roll back about 30% of the transactions"
    assert all(getattr(o, "id" if isinstance(o, Customer) else "number") is None for o in lost)
    customers = committed(orm, Customer, "id", tenant)
    numbers = committed(orm, Invoice, "number", tenant)
    assert ordinals(customers, "CUS") == list(range(1, len(customers) + 1))
    assert ordinals(numbers, "INV2026") == list(range(1, len(numbers) + 1))
    kept_customers = sorted(o.id for o in kept if isinstance(o, Customer))
    assert len(customers) == 1 + len(kept_customers)
    assert set(kept_customers) <= set(customers)
    assert len(numbers) == 1 + sum(isinstance(o, Invoice) for o in kept)


# Not SQLite: it serialises whole write transactions (BEGIN IMMEDIATE), numbered or not.
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_at_commit_a_long_transaction_does_not_hold_up_the_others(
    orm: Db, tenant: str
) -> None:
    """Numbered at flush, a second writer waits for the first's commit; at commit, it does not."""

    def other_sync(model: Callable[[], Any]) -> Any:
        with orm.sessions() as session:
            obj = model()
            session.add(obj)
            session.commit()
            return obj

    async def other(model: Callable[[], Any]) -> Any:
        if not orm.is_async:
            return await asyncio.to_thread(other_sync, model)
        session: AsyncSession
        async with orm.sessions() as session:
            obj = model()
            session.add(obj)
            await session.commit()
            return obj

    def invoice() -> Invoice:
        return Invoice(tenant=tenant, issued_on=DAY)

    def customer() -> Customer:
        return Customer(tenant=tenant)

    async with orm.session() as h:  # at commit: the other writer goes first
        mine = invoice()
        h.session.add(mine)
        await resolve(h.session.flush())
        theirs = await asyncio.wait_for(other(invoice), 10)
        await h.commit()
    assert (theirs.number, mine.number) == ("INV2026-AAA0001", "INV2026-AAA0002")

    async with orm.session() as h:  # at flush: the other writer waits for the commit
        first = customer()
        h.session.add(first)
        await resolve(h.session.flush())
        waiting = asyncio.ensure_future(other(customer))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second writer did not wait for the sequence's lock"
        await h.commit()
        second = await asyncio.wait_for(waiting, 10)
    assert (first.id, second.id) == ("CUS-AAA0001", "CUS-AAA0002")


# --- declaration and installation -------------------------------------------------------------


def test_a_bad_prefix_is_refused_where_the_model_is_declared() -> None:
    with pytest.raises(InvalidPrefixError, match="uppercase letters"):
        numbered("CUS-")
    with pytest.raises(InvalidPrefixError, match="Unknown date token"):
        numbered("INV{YEAR}")


def test_a_primary_key_cannot_be_numbered_at_commit(sqlite_url: str) -> None:
    class Throwaway(DeclarativeBase):  # not the module's Base: other tests create its tables
        pass

    class Late(Throwaway):
        __tablename__ = "orm_late"
        id: Mapped[str] = mapped_column(
            String(300), primary_key=True, info=numbered("LATE", at_commit=True)
        )

    engine = sa.create_engine(sync_url(sqlite_url))
    with Session(engine) as session:
        install(session)
        session.add(Late())
        with pytest.raises(InvalidInputError, match="primary key"):
            session.flush()
    engine.dispose()


async def test_install_on_one_session(orm: Db, tenant: str) -> None:
    """A session or an AsyncSession on its own; installing twice numbers once."""
    engine = orm.engine
    session: Any = AsyncSession(engine) if orm.is_async else Session(engine)
    install(session)
    install(session)
    try:
        invoice, customer = Invoice(tenant=tenant, issued_on=DAY), Customer(tenant=tenant)
        session.add_all([invoice, customer])
        await resolve(session.commit())
        assert orm.peek("CUS", tenant) == 1 and orm.peek("INV2026", tenant) == 1
    finally:
        await resolve(session.close())
    assert sorted(committed(orm, Invoice, "number", tenant)) == ["INV2026-AAA0001"]
