"""The contract every backend keeps (SQLite, PostgreSQL, MariaDB), with async and sync sessions."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Db, resolve

import idmanager
from idmanager import (
    ConflictError,
    IdFormat,
    InvalidCountError,
    InvalidIdError,
    InvalidPrefixError,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    StorageError,
)

HEALTH = "_HEALTH_CHECK_"


def ids(prefix: str, first: int, last: int) -> list[str]:
    """Return the IDs ``first`` … ``last`` (ordinals) of a prefix in the first letter block."""
    return [f"{prefix}-AAA{n:04d}" for n in range(first, last + 1)]


def one_statement(db: Db) -> int:
    # MySQL/MariaDB have no UPDATE with RETURNING: allocation there is update + locking read.
    return 2 if db.backend == "mariadb" else 1


async def issue(db: Db, prefix: str, count: int = 1, **kwargs: Any) -> list[str]:
    """Allocate in a transaction of its own and commit it."""
    async with db.session() as h:
        result = await h.service.bulk_generate_ids(prefix, count, **kwargs)
        await h.commit()
    return list(result)


# --- allocation -------------------------------------------------------------------------------


async def test_first_id_is_aaa0001_and_the_sequence_continues(db: Db, prefix: str) -> None:
    async with db.session() as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0001"
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0002"
        await h.commit()
    async with db.session() as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0003"
        await h.commit()
    assert db.peek(prefix) == 3


async def test_one_id_costs_one_statement(db: Db, prefix: str) -> None:
    async with db.session() as h:
        await h.begin()
        with db.statements() as created:
            await h.service.generate_id(prefix)
        with db.statements() as continued:
            await h.service.generate_id(prefix)
        await h.commit()
    # The first allocation creates the sequence with its IDs and audits that, once. MariaDB
    # allocates and creates in one upsert (InnoDB's gap locks would deadlock a look first).
    extra = 1 if db.backend == "mariadb" else 2
    assert len(created) == one_statement(db) + extra, created
    assert created[-1].startswith("INSERT INTO id_manager_audit"), created
    assert len(continued) == one_statement(db), continued


async def test_bulk_returns_consecutive_ids_in_one_statement(db: Db, prefix: str) -> None:
    await issue(db, prefix)
    async with db.session() as h:
        await h.begin()
        with db.statements() as seen:
            bulk = await h.service.bulk_generate_ids(prefix, 500)
        await h.commit()
    assert bulk == ids(prefix, 2, 501)
    assert len(seen) == one_statement(db), seen
    assert db.peek(prefix) == 501


async def test_bulk_crosses_into_the_next_letter_block(db: Db, prefix: str) -> None:
    async with db.session() as h:
        await h.service.reset_sequence(prefix, f"{prefix}-AAA9998")
        bulk = await h.service.bulk_generate_ids(prefix, 3)
        await h.commit()
    assert bulk == [f"{prefix}-AAA9999", f"{prefix}-AAB0001", f"{prefix}-AAB0002"]


async def test_bad_input_is_refused_before_the_database(db: Db, prefix: str) -> None:
    async with db.session() as h:
        with pytest.raises(InvalidCountError, match="Count must be greater than 0"):
            await h.service.bulk_generate_ids(prefix, 0)
        with pytest.raises(InvalidPrefixError, match="Prefix cannot be empty"):
            await h.service.generate_id("  ")
        with pytest.raises(InvalidPrefixError, match="only contain uppercase letters"):
            await h.service.generate_id("CUS-1")
        with pytest.raises(InvalidPrefixError, match="reserved"):
            await h.service.generate_id(HEALTH)
        # Prefixes are trimmed and upper-cased: the same sequence.
        assert await h.service.generate_id(f" {prefix.lower()} ") == f"{prefix}-AAA0001"
        await h.commit()
    assert db.peek(prefix) == 1


async def test_a_sequence_never_overflows_its_bigint(db: Db, prefix: str) -> None:
    last = 2**63 - 1  # the largest last_value BIGINT (and SQLite's INTEGER) can hold
    async with db.session() as h:
        await h.service.reset_sequence(prefix, idmanager.format_id(prefix, last - 3))
        await h.commit()
    for create_missing in (True, False):
        async with db.session(create_missing=create_missing) as h:
            with pytest.raises(ConflictError, match="would pass the last ID"):
                await h.service.bulk_generate_ids(prefix, 4)
            # SQLite would have stored a REAL; the sequence must stay an exact integer.
            assert await h.service.bulk_generate_ids(prefix, 3) == [
                idmanager.format_id(prefix, n) for n in range(last - 2, last + 1)
            ]
            with pytest.raises(ConflictError):
                await h.service.generate_id(prefix)
            await h.rollback()
    assert db.peek(prefix) == last - 3


async def test_totals_stay_exact_past_the_bigint_range(db: Db, scope: str) -> None:
    near = 2**63 - 10
    async with db.session() as h:
        for name in ("BIGA", "BIGB"):
            await h.service.reset_sequence(name, idmanager.format_id(name, near), scope=scope)
        stats = await h.service.get_service_stats(scope=scope)
        health = await h.service.health_check()
        await h.rollback()
    assert stats == idmanager.ServiceStats(prefix_count=2, total_issued=2 * near)
    assert health.healthy, health


# --- transactions: the caller's, never committed by the library ------------------------------


async def test_the_library_never_commits_the_callers_session(db: Db, prefix: str) -> None:
    commits: list[object] = []

    def record(connection: object) -> None:
        commits.append(connection)

    sa.event.listen(db.sync_engine, "commit", record)
    try:
        async with db.session() as h:
            await h.service.bulk_generate_ids(prefix, 3)
            await h.service.generate_id(prefix)
            await h.service.get_current_id(prefix)
            await h.service.get_prefix_stats(prefix)
            await h.service.get_all_prefixes()
            await h.service.health_check()
            await h.service.deactivate_prefix(prefix)
            await h.service.activate_prefix(prefix)
            await h.service.reset_sequence(prefix, f"{prefix}-AAA0010")
            assert commits == []
            assert db.peek(prefix) is None  # another connection sees nothing yet
    finally:
        sa.event.remove(db.sync_engine, "commit", record)
    assert db.peek(prefix) is None
    assert db.audit(prefix) == []


async def test_after_rollback_the_same_number_is_handed_out_again(db: Db, prefix: str) -> None:
    await issue(db, prefix)
    async with db.session() as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0002"
        await h.rollback()
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0002"
        assert await h.service.bulk_generate_ids(prefix, 2) == ids(prefix, 3, 4)
        await h.rollback()
    async with db.session() as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0002"
        await h.commit()
    assert db.peek(prefix) == 2


async def test_ids_become_permanent_when_the_caller_commits(db: Db, prefix: str) -> None:
    async with db.session() as h:
        issued = await h.service.bulk_generate_ids(prefix, 5)
        assert db.peek(prefix) is None
        await h.commit()
        assert db.peek(prefix) == 5
    async with db.session() as h:
        assert await h.service.get_current_id(prefix) == issued[-1]


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_second_writer_waits_for_the_first(db: Db, prefix: str, outcome: str) -> None:
    """The allocation locks the row until the caller ends its transaction: gapless numbering."""

    def other_writer_sync() -> str:
        with db.sessions() as session:
            repository = idmanager.IdManagerRepositoryImpl(session)
            value = idmanager.SyncIdManagerService(repository).generate_id(prefix)
            session.commit()
            return value

    async def other_writer() -> str:
        if not db.is_async:
            return await asyncio.to_thread(other_writer_sync)
        async with db.session() as other:
            value = await other.service.generate_id(prefix)
            await other.commit()
            return str(value)

    async with db.session() as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0001"
        waiting = asyncio.ensure_future(other_writer())
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second writer did not wait for the first's row lock"
        await (h.commit() if outcome == "commit" else h.rollback())
        second = await asyncio.wait_for(waiting, 20)
    assert second == f"{prefix}-AAA000{2 if outcome == 'commit' else 1}"
    assert db.peek(prefix) == (2 if outcome == "commit" else 1)


# --- activation -------------------------------------------------------------------------------


async def test_an_inactive_prefix_refuses_ids_and_nothing_moves(db: Db, prefix: str) -> None:
    await issue(db, prefix, 2)
    async with db.session() as h:
        manager = await h.service.deactivate_prefix(prefix)
        assert manager.is_active is False
        await h.commit()
    async with db.session() as h:
        with pytest.raises(PrefixInactiveError, match="inactive"):
            await h.service.generate_id(prefix)
        with pytest.raises(PrefixInactiveError):
            await h.service.bulk_generate_ids(prefix, 5)
        assert await h.service.get_current_id(prefix) == f"{prefix}-AAA0002"
        stats = await h.service.get_prefix_stats(prefix)
        assert (stats.is_active, stats.count_issued) == (False, 2)
        await h.commit()
    assert db.peek(prefix) == 2
    async with db.session() as h:
        await h.service.activate_prefix(prefix)
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0003"
        await h.commit()
    assert [row[0] for row in db.audit(prefix)] == ["create", "deactivate", "activate"]


async def test_activating_an_unknown_prefix_is_an_error(db: Db, prefix: str) -> None:
    async with db.session() as h:
        with pytest.raises(PrefixNotFoundError):
            await h.service.activate_prefix(prefix)
        with pytest.raises(PrefixNotFoundError):
            await h.service.deactivate_prefix(prefix)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
async def test_a_deactivation_committed_meanwhile_is_seen(db: Db, prefix: str) -> None:
    """An open transaction whose snapshot predates a deactivation must not allocate.

    (SQLite cannot interleave like this: its write transactions are serialised from BEGIN.)
    """
    await issue(db, prefix)
    async with db.session() as reader:
        assert await reader.service.get_current_id(prefix) == f"{prefix}-AAA0001"
        async with db.session() as admin:
            await admin.service.deactivate_prefix(prefix)
            await admin.commit()
        with pytest.raises(PrefixInactiveError):
            await reader.service.generate_id(prefix)
    assert db.peek(prefix) == 1


# --- waiting for a busy sequence -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
@pytest.mark.parametrize("wait_ms", [0, 300])
async def test_a_caller_may_refuse_to_wait_for_a_busy_sequence(
    db: Db, prefix: str, wait_ms: int
) -> None:
    """``lock_timeout_ms`` bounds the wait for a sequence another transaction holds.

    The refusal is ``BusyError`` (a busy sequence, not an outage), and only that call waits
    so: the caller's other statements keep the session's own wait.
    """
    await issue(db, prefix)
    async with db.session() as holder:
        assert await holder.service.generate_id(prefix) == f"{prefix}-AAA0002"  # holds it
        async with db.session(lock_timeout_ms=wait_ms) as impatient:
            began = time.monotonic()
            with pytest.raises(idmanager.BusyError, match="busy"):
                await impatient.service.generate_id(prefix)
            waited = time.monotonic() - began
            await impatient.rollback()
        await holder.commit()
    # InnoDB counts whole seconds (0 does not wait); PostgreSQL milliseconds.
    bound = (1.0 if wait_ms else 0.0) if db.backend == "mariadb" else wait_ms / 1000
    assert bound * 0.8 <= waited < bound + 1.5, waited
    async with db.session(lock_timeout_ms=wait_ms) as h:
        assert await h.service.generate_id(prefix) == f"{prefix}-AAA0003"  # free again
        await h.commit()


# --- reset ------------------------------------------------------------------------------------


async def test_reset_refuses_to_go_backwards_unless_forced(db: Db, prefix: str) -> None:
    await issue(db, prefix, 5)
    async with db.session() as h:
        with pytest.raises(ResetRefusedError, match="backwards"):
            await h.service.reset_sequence(prefix)
        with pytest.raises(ResetRefusedError):
            await h.service.reset_sequence(prefix, f"{prefix}-AAA0003")
        dry = await h.service.reset_sequence(prefix, None, True, dry_run=True)
        assert (dry.dry_run, dry.next_id) == (True, f"{prefix}-AAA0001")
        assert await h.service.get_current_id(prefix) == f"{prefix}-AAA0005"
        result = await h.service.reset_sequence(prefix, None, force=True)
        await h.commit()
    assert (result.previous_id, result.latest_id, result.next_id, result.forced) == (
        f"{prefix}-AAA0005",
        None,
        f"{prefix}-AAA0001",
        True,
    )
    assert await issue(db, prefix) == [f"{prefix}-AAA0001"]
    assert db.audit(prefix)[1:] == [("reset", 5, 0, None, "forced")]


async def test_reset_forward_skips_ahead_and_is_audited(db: Db, prefix: str) -> None:
    await issue(db, prefix)
    async with db.session(actor="alice") as h:
        result = await h.service.reset_sequence(prefix, f"{prefix}-AAB0010")
        assert result.next_id == f"{prefix}-AAB0011"
        assert await h.service.generate_id(prefix) == f"{prefix}-AAB0011"
        await h.commit()
    assert db.audit(prefix)[1:] == [("reset", 1, 10_009, "alice", None)]


async def test_a_rolled_back_reset_leaves_no_audit_row(db: Db, prefix: str) -> None:
    await issue(db, prefix)
    async with db.session() as h:
        await h.service.reset_sequence(prefix, f"{prefix}-AAA0100")
        await h.rollback()
    assert db.peek(prefix) == 1
    assert [row[0] for row in db.audit(prefix)] == ["create"]


async def test_reset_to_an_id_of_another_prefix_is_refused(db: Db, prefix: str) -> None:
    async with db.session() as h:
        with pytest.raises(InvalidIdError, match=f"Reset ID must start with '{prefix}-'"):
            await h.service.reset_sequence(prefix, "OTHER-AAA0001")


async def test_the_seeds_reset_example_makes_the_next_id_aaaa0001(db: Db, scope: str) -> None:
    async with db.session() as h:
        await h.service.reset_sequence("TEST", "TEST-ZZZ9999", scope=scope)
        assert await h.service.generate_id("TEST", scope=scope) == "TEST-AAAA0001"
        await h.commit()
    registered, reset = db.audit("TEST", scope)
    assert registered[:3] == ("register", None, 0)
    assert reset == ("reset", 0, 26**3 * 9999, None, None)


# --- reading ----------------------------------------------------------------------------------


async def test_get_current_id_reads_without_allocating(db: Db, prefix: str) -> None:
    async with db.session() as h:
        assert await h.service.get_current_id(prefix) is None
        await h.service.bulk_generate_ids(prefix, 3)
        assert await h.service.get_current_id(prefix) == f"{prefix}-AAA0003"
        assert await h.service.get_current_id(prefix) == f"{prefix}-AAA0003"
        await h.commit()
    assert db.peek(prefix) == 3


async def test_get_all_prefixes_lists_a_scope_in_order(db: Db, scope: str) -> None:
    async with db.session() as h:
        await h.service.health_check()
        for name in ("ZED", "ALPHA", "MID"):
            await h.service.generate_id(name, scope=scope)
        await h.service.deactivate_prefix("MID", scope=scope)
        await h.commit()
    async with db.session() as h:
        everything = await h.service.get_all_prefixes(scope=scope)
        active = await h.service.get_all_prefixes(scope=scope, active_only=True)
        page = await h.service.get_all_prefixes(scope=scope, skip=1, limit=1)
        anywhere = await h.service.get_all_prefixes(limit=100_000)
    assert [m.prefix for m in everything] == ["ALPHA", "MID", "ZED"]
    assert [m.prefix for m in active] == ["ALPHA", "ZED"]
    assert [m.prefix for m in page] == ["MID"]
    assert all(m.scope == scope and m.latest_id == f"{m.prefix}-AAA0001" for m in everything)
    assert HEALTH not in {m.prefix for m in anywhere}


async def test_scope_patterns_cut_lists_and_the_audit_trail(db: Db, prefix: str) -> None:
    """A key bound to ``shop-*|acme`` sees those scopes only: the patterns are in the query.

    ``_`` and ``%`` in a scope are no wildcards; ``?`` is one character.
    """
    tag = prefix[-6:].lower()
    scopes = [f"shop-{tag}-1", f"shop-{tag}-2", f"acme{tag}", f"acme{tag}x", f"shop_{tag}"]
    async with db.session(actor="ops") as h:
        for scope in scopes:
            await h.service.generate_id(prefix, scope=scope)
        await h.commit()
    patterns = (f"shop-{tag}-*", f"acme{tag}", f"shop?{tag}")
    async with db.session() as h:
        listed = await h.service.get_all_prefixes(scopes=patterns, limit=1000)
        page = await h.service.list_audit(prefix=prefix, scopes=patterns)
    seen = sorted(m.scope for m in listed if m.prefix == prefix)
    assert seen == sorted([f"shop-{tag}-1", f"shop-{tag}-2", f"acme{tag}", f"shop_{tag}"])
    assert sorted(r.scope for r in page.items) == seen
    async with db.session() as h:
        escaped = await h.service.get_all_prefixes(scopes=(f"shop_{tag}",), limit=1000)
    assert [m.scope for m in escaped if m.prefix == prefix] == [f"shop_{tag}"]


async def test_get_prefix_stats(db: Db, prefix: str) -> None:
    async with db.session() as h:
        unknown = await h.service.get_prefix_stats(prefix)
        await h.service.bulk_generate_ids(prefix, 3)
        await h.commit()
    assert unknown.exists is False
    assert (unknown.latest_id, unknown.next_id, unknown.count_issued) == (
        None,
        f"{prefix}-AAA0001",
        0,
    )
    async with db.session() as h:
        stats = await h.service.get_prefix_stats(prefix)
    assert stats.exists is True
    assert stats.prefix == prefix
    assert (stats.latest_id, stats.next_id, stats.count_issued) == (
        f"{prefix}-AAA0003",
        f"{prefix}-AAA0004",
        3,
    )
    assert stats.is_active is True
    assert stats.format == IdFormat("-", 3, 4)
    assert stats.warning is None
    for key, stamp in (("created_at", stats.created_at), ("updated_at", stats.updated_at)):
        assert stamp is not None and stamp.tzinfo is not None
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=2), (key, stamp)


async def test_the_format_is_stored_with_the_prefix(db: Db, prefix: str) -> None:
    async with db.session() as h:
        await h.service.configure_prefix(prefix, fmt=IdFormat("", 0, 6))
        await h.commit()
    async with db.session() as h:
        assert await h.service.bulk_generate_ids(prefix, 2) == [
            f"{prefix}000001",
            f"{prefix}000002",
        ]
        await h.commit()


async def test_scopes_are_separate_and_exact_sequences(db: Db, prefix: str, scope: str) -> None:
    # MySQL's default collation would make the first two one sequence: the migration makes
    # the key exact, as it is on PostgreSQL and SQLite.
    variants = [scope, scope.upper(), ""]
    for variant in variants:
        assert await issue(db, prefix, scope=variant) == [f"{prefix}-AAA0001"]
    assert await issue(db, prefix, scope=scope) == [f"{prefix}-AAA0002"]
    assert [db.peek(prefix, variant) for variant in variants] == [2, 1, 1]


async def test_registered_prefixes_only(db: Db, prefix: str) -> None:
    async with db.session(create_missing=False) as h:
        with pytest.raises(PrefixNotFoundError, match="not registered"):
            await h.service.generate_id(prefix)
        await h.service.configure_prefix(prefix)
        await h.begin()
        with db.statements() as seen:
            assert await h.service.bulk_generate_ids(prefix, 2) == ids(prefix, 1, 2)
        await h.service.deactivate_prefix(prefix)
        with pytest.raises(PrefixInactiveError):
            await h.service.generate_id(prefix)
        await h.commit()
    assert len(seen) == one_statement(db), seen
    assert db.peek(prefix) == 2


# --- health -----------------------------------------------------------------------------------


async def test_health_check_has_the_seeds_shape_and_leaves_nothing(db: Db, prefix: str) -> None:
    async with db.session() as h:
        pending = await h.service.generate_id(prefix)  # the caller's uncommitted work
        first = await h.service.health_check()
        second = await h.service.health_check()
        assert await h.rows(f"SELECT prefix FROM id_managers WHERE prefix = '{HEALTH}'") == []
        assert await h.service.get_current_id(prefix) == pending
        await h.commit()
    for health in (first, second):
        assert health.healthy, health
        assert health["status"] == "healthy"
        assert health["message"] == "ID Manager service is operational"
        assert health["test_id_generated"] == f"{HEALTH}-AAA0001"
        assert isinstance(health["prefix_count"], int) and health["prefix_count"] >= 1
        assert health["timestamp"].endswith("Z")
        stamp = datetime.fromisoformat(health["timestamp"].replace("Z", "+00:00"))
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
    assert db.peek(prefix) == 1  # the pending work survived and was committed
    assert db.peek(HEALTH) is None


async def test_health_check_in_a_fresh_session(db: Db) -> None:
    async with db.session() as h:
        health = await h.service.health_check()
        await h.commit()
    assert health["status"] == "healthy"
    assert db.peek(HEALTH) is None


# --- the seed's examples, as written (on a database of their own) -----------------------------


@pytest.mark.parametrize("mode", ["async"])
async def test_seed_basic_usage(fresh_db: Db) -> None:
    from idmanager import IdGeneratorUtil, IdPrefixes

    class Customer:
        def __init__(self, id: str, **data: Any) -> None:
            self.id, self.data = id, data

    class CustomerService:
        # In a service method with database session
        async def create_customer(self, customer_data: dict[str, Any], db_session: Any) -> Any:
            # Generate unique customer ID
            customer_id = await IdGeneratorUtil.generate_id(IdPrefixes.CUSTOMER, db_session)
            # Result: "CUS-AAA0001"

            customer = Customer(id=customer_id, **customer_data)
            return customer

    async with fresh_db.session() as h:
        customer = await CustomerService().create_customer({"name": "Ada"}, h.session)
        second = await CustomerService().create_customer({"name": "Bob"}, h.session)
        await h.commit()
    assert customer.id == "CUS-AAA0001"
    assert second.id == "CUS-AAA0002"
    assert fresh_db.peek("CUS") == 2


@pytest.mark.parametrize("mode", ["sync"])
async def test_seed_basic_usage_with_a_sync_session(fresh_db: Db) -> None:
    from idmanager import IdGeneratorUtil, IdPrefixes

    with fresh_db.sessions() as db_session:
        customer_id = IdGeneratorUtil.generate_id(IdPrefixes.CUSTOMER, db_session)
        db_session.commit()
    assert customer_id == "CUS-AAA0001"


async def test_seed_advanced_usage(fresh_db: Db) -> None:
    from idmanager import IdManagerRepositoryImpl, IdManagerService

    async with fresh_db.session() as h:
        db_session = h.session

        # Direct service usage
        repository = IdManagerRepositoryImpl(db_session)
        service = IdManagerService(repository)

        # Generate single ID
        purchase_id = await service.generate_id("PUR")  # "PUR-AAA0001"

        # Bulk generation
        invoice_ids = await service.bulk_generate_ids("INV", 10)
        # ["INV-AAA0001", "INV-AAA0002", ..., "INV-AAA0010"]

        # Reset sequence
        await service.reset_sequence("TEST", "TEST-ZZZ9999")

        # Health check
        health_status = await service.health_check()

        await h.commit()
    assert purchase_id == "PUR-AAA0001"
    assert invoice_ids == ids("INV", 1, 10)
    assert fresh_db.peek("TEST") == 26**3 * 9999
    assert health_status["status"] == "healthy"
    assert health_status["prefix_count"] == 3
    assert health_status["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"
    assert fresh_db.peek(HEALTH) is None


# --- IdGeneratorUtil and the use cases ---------------------------------------------------------


async def test_id_generator_util_joins_the_callers_session(db: Db, prefix: str) -> None:
    from idmanager import IdGeneratorUtil

    async with db.session() as h:
        first = await resolve(IdGeneratorUtil.generate_id(prefix, h.session))
        bulk = await resolve(IdGeneratorUtil.bulk_generate_ids(prefix, 3, h.session))
        current = await resolve(IdGeneratorUtil.get_current_id(prefix, h.session))
        assert db.peek(prefix) is None
        await h.rollback()
    assert (first, bulk, current) == (f"{prefix}-AAA0001", ids(prefix, 2, 4), f"{prefix}-AAA0004")
    async with db.session() as h:
        again = await resolve(IdGeneratorUtil.generate_id(prefix, h.session, scope="x"))
        await h.commit()
    assert again == f"{prefix}-AAA0001"
    assert (db.peek(prefix), db.peek(prefix, "x")) == (None, 1)


async def test_id_generator_util_with_an_engine_commits_before_returning(
    db: Db, prefix: str
) -> None:
    from idmanager import IdGeneratorUtil

    first = await resolve(IdGeneratorUtil.generate_id(prefix, db.engine))
    assert db.peek(prefix) == 1
    bulk = await resolve(IdGeneratorUtil.bulk_generate_ids(prefix, 3, db.sessions))
    assert db.peek(prefix) == 4
    current = await resolve(IdGeneratorUtil.get_current_id(prefix, db.engine))
    assert (first, bulk, current) == (f"{prefix}-AAA0001", ids(prefix, 2, 4), f"{prefix}-AAA0004")


async def test_id_generator_util_refuses_other_objects() -> None:
    from idmanager import IdGeneratorUtil

    with pytest.raises(TypeError, match="session, engine or session factory"):
        IdGeneratorUtil.generate_id("CUS", "sqlite:///x.db")


async def test_use_cases_own_and_commit_their_transaction(db: Db, prefix: str) -> None:
    use_cases = db.use_cases()
    assert await use_cases.run(lambda s: s.generate_id(prefix)) == f"{prefix}-AAA0001"
    assert db.peek(prefix) == 1
    rolled_back = await use_cases.run(lambda s: s.bulk_generate_ids(prefix, 5), commit=False)
    assert rolled_back == ids(prefix, 2, 6)
    assert db.peek(prefix) == 1
    result = await use_cases.run(lambda s: s.reset_sequence(prefix, f"{prefix}-AAA0009"))
    assert result.next_id == f"{prefix}-AAA0010"
    assert db.peek(prefix) == 9
    assert [row[0] for row in db.audit(prefix)] == ["create", "reset"]
    with pytest.raises(PrefixNotFoundError):
        await db.use_cases(create_missing=False).run(lambda s: s.generate_id(prefix + "X"))


async def test_use_case_allocation_is_one_statement_committed_before_it_returns(
    db: Db, backend: str, prefix: str
) -> None:
    async with db.traced() as traced:
        use_cases = traced.use_cases()
        first = await use_cases.allocate(prefix, 2)  # creates the sequence, audited
        assert list(first) == ids(prefix, 1, 2)
        # Counted where the database receives them: the allocation runs on the driver.
        async with traced.received() as seen:
            assert list(await use_cases.allocate(prefix)) == ids(prefix, 3, 3)
        assert db.peek(prefix) == 3  # visible to another connection: committed
        if backend == "mariadb":
            # No RETURNING: the update alone, committed by the server, then a plain read.
            assert [s.split()[0] for s in seen] == ["UPDATE", "SELECT"], seen
        else:
            # Autocommit: the statement alone, no BEGIN or COMMIT round trips.
            assert len(seen) == 1 and seen[0].startswith("UPDATE id_managers"), seen
        # Another writer is not blocked by a transaction left open.
        async with db.session() as h:
            assert await h.service.generate_id(prefix) == f"{prefix}-AAA0004"
            await h.commit()
        assert list(await use_cases.allocate(prefix, 1)) == [f"{prefix}-AAA0005"]
        with pytest.raises(PrefixInactiveError):
            await use_cases.run(lambda s: s.deactivate_prefix(prefix))
            await use_cases.allocate(prefix)
        assert db.peek(prefix) == 5


# --- migrations and failures --------------------------------------------------------------------


def _head() -> str:
    """Return the newest migration's revision."""
    from alembic.script import ScriptDirectory

    from idmanager.infrastructure.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


@pytest.mark.parametrize("mode", ["sync"])
async def test_migrate_is_idempotent(fresh_db: Db, prefix: str) -> None:
    await issue(fresh_db, prefix, 3)
    idmanager.migrate(fresh_db.url)
    idmanager.migrate(fresh_db.url)
    with fresh_db.reader.connect() as connection:
        assert connection.execute(
            sa.text("SELECT version_num FROM idmanager_alembic_version")
        ).all() == [(_head(),)]
    assert fresh_db.peek(prefix) == 3
    assert await issue(fresh_db, prefix) == [f"{prefix}-AAA0004"]


@pytest.mark.parametrize("mode", ["sync"])
async def test_the_migration_is_reversible(fresh_db: Db) -> None:
    from alembic import command

    from idmanager.infrastructure.migrate import alembic_config

    command.downgrade(alembic_config(fresh_db.url), "base")
    assert sa.inspect(fresh_db.reader).get_table_names() == ["idmanager_alembic_version"]
    idmanager.migrate(fresh_db.url)
    assert {"id_managers", "id_manager_audit"} <= set(sa.inspect(fresh_db.reader).get_table_names())
    assert await issue(fresh_db, "REV") == ["REV-AAA0001"]


@pytest.mark.parametrize("mode", ["sync"])
async def test_the_migrations_match_the_models(db: Db) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from idmanager.infrastructure.models import Base

    def ours(name: str | None, type_: str, parent_names: object) -> bool:
        # The session's database also holds other tests' tables (an order table, ORM models).
        return type_ != "table" or name in Base.metadata.tables

    with db.sync_engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": "idmanager_alembic_version",
                "include_name": ours,
            },
        )
        assert compare_metadata(context, Base.metadata) == []


async def test_an_unmigrated_database_says_to_run_migrate(
    backend: str, mode: str, databases: Any, prefix: str
) -> None:
    db = Db(backend, mode, databases.create(backend, migrate=False))
    try:
        async with db.session() as h:
            with pytest.raises(StorageError, match="run `idmanager migrate`"):
                await h.service.generate_id(prefix)
        async with db.session() as h:
            health = await h.service.health_check()
        assert health["status"] == "unhealthy"
        assert health["error_type"] == "StorageError"
        assert "idmanager migrate" in health["message"]
        with pytest.raises(StorageError, match="run `idmanager migrate`"):
            await db.use_cases().run(lambda s: s.generate_id(prefix))
    finally:
        await db.dispose()


UNREACHABLE = {
    # A file SQLite cannot open (a folder): the database is there, and unusable.
    "sqlite": "sqlite:////tmp",
    "postgresql": "postgresql://postgres@127.0.0.1:1/idmanager",
    "mariadb": "mysql://root@127.0.0.1:1/idmanager",
}


async def test_an_unreachable_database_is_a_storage_error(
    backend: str, mode: str, prefix: str
) -> None:
    db = Db(backend, mode, UNREACHABLE[backend])
    try:
        async with db.session() as h:
            with pytest.raises(StorageError, match="Database unavailable") as caught:
                await h.service.generate_id(prefix)
            assert caught.value.__cause__ is not None  # the driver's error, chained
        async with db.session() as h:
            health = await h.service.health_check()
        assert (health["status"], health["error_type"]) == ("unhealthy", "StorageError")
        assert health["message"].startswith("ID Manager service error: Database unavailable")
        with pytest.raises(StorageError):
            await db.use_cases().run(lambda s: s.generate_id(prefix))
    finally:
        await db.dispose()
        # aiosqlite stops the worker thread of a failed connection with a future nobody
        # awaits; give the thread time to resolve it before the test's event loop closes.
        await asyncio.sleep(0.05)
    with pytest.raises(StorageError, match="Database unavailable"):
        idmanager.migrate(UNREACHABLE[backend])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sqlite_database_in_a_missing_folder_is_refused_at_once(
    backend: str, tmp_path: Any
) -> None:
    """Not an outage to wait out: a misspelt path, said at once, and nothing created."""
    url = f"sqlite:///{tmp_path}/missing/ids.db"
    for make in (idmanager.create_engine, idmanager.create_async_engine, idmanager.migrate):
        with pytest.raises(idmanager.InvalidInputError, match=r"folder .*missing does not exist"):
            make(url)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("backend", ["mariadb"])
async def test_mariadb_timestamps_are_utc_whatever_the_session_zone(url: str, prefix: str) -> None:
    engine = idmanager.create_engine(url, connect_args={"init_command": "SET time_zone='+05:00'"})
    try:
        use_cases = idmanager.connect(engine)
        use_cases.run(lambda s: s.generate_id(prefix))
        stats = use_cases.run(lambda s: s.get_prefix_stats(prefix))
    finally:
        engine.dispose()
    stamp = stats.created_at
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=2), stamp


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_engines_wait_for_each_other(db: Db) -> None:
    """WAL, a busy timeout, and transactions that take the write lock when they begin.

    For aiosqlite the driver-level autocommit switch goes through SQLAlchemy's adapted
    connection: check it reached the real sqlite3 connection.
    """
    async with db.session() as h:
        with db.statements() as seen:
            await h.begin()
        assert seen == ["BEGIN IMMEDIATE"]
        assert await h.rows("PRAGMA journal_mode") == [("wal",)]
        assert await h.rows("PRAGMA busy_timeout") == [(30_000,)]
        connection = await resolve(h.session.connection())
        if db.is_async:
            raw = await connection.get_raw_connection()
            sqlite3_connection = raw.driver_connection._conn  # aiosqlite's sqlite3 connection
        else:
            sqlite3_connection = connection.connection.driver_connection
        assert sqlite3_connection.isolation_level is None
        assert sqlite3_connection.in_transaction
