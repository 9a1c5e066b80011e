"""The service over an in-memory repository: what callers of the seed's API rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from idmanager import (
    FormatLockedError,
    IdFormat,
    IdManagerService,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    ServiceOptions,
    ServiceStats,
    StorageError,
    SyncIdManagerService,
)
from idmanager.domain.entity import IdManager

from .fakes import FakeRepository

THREE_LETTERS = 26**3 * 9999


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def service(repo: FakeRepository) -> SyncIdManagerService:
    return SyncIdManagerService(repo, ServiceOptions(max_count=1000, actor="alice"))


# --- generating -------------------------------------------------------------------------------


def test_first_id_then_sequential(service: SyncIdManagerService) -> None:
    assert service.generate_id("PUR") == "PUR-AAA0001"
    assert service.generate_id(" pur ") == "PUR-AAA0002"
    assert service.get_current_id("PUR") == "PUR-AAA0002"
    assert service.get_current_id("UNKNOWN") is None


def test_bulk_is_consecutive_and_one_allocation(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    service.generate_id("INV")
    repo.calls.clear()
    ids = service.bulk_generate_ids("INV", 10)
    assert ids == [f"INV-AAA{n:04d}" for n in range(2, 12)]
    assert repo.calls.count("allocate") == 1
    assert service.generate_id("INV") == "INV-AAA0012"


def test_bulk_across_a_letter_block(service: SyncIdManagerService, repo: FakeRepository) -> None:
    service.reset_sequence("INV", "INV-AAA9998")
    repo.calls.clear()
    assert service.bulk_generate_ids("INV", 3) == ["INV-AAA9999", "INV-AAB0001", "INV-AAB0002"]
    assert repo.calls.count("allocate") == 1


@pytest.mark.parametrize("count", [0, -3, 1001, True, 2.0])
def test_bad_counts_change_nothing(
    service: SyncIdManagerService, repo: FakeRepository, count: int
) -> None:
    service.generate_id("SAL")
    before, calls = repo.snapshot(), len(repo.calls)
    with pytest.raises(InvalidCountError):
        service.bulk_generate_ids("SAL", count)
    assert repo.snapshot() == before
    assert "allocate" not in repo.calls[calls:]


@pytest.mark.parametrize("prefix", ["_HEALTH_CHECK_", " _health_check_ "])
def test_health_check_prefix_is_reserved(
    service: SyncIdManagerService, repo: FakeRepository, prefix: str
) -> None:
    with pytest.raises(InvalidPrefixError, match="reserved"):
        service.generate_id(prefix)
    with pytest.raises(InvalidPrefixError, match="reserved"):
        service.reset_sequence(prefix, force=True)
    assert repo.rows == {}


def test_bad_prefix_uses_the_seed_message(service: SyncIdManagerService) -> None:
    with pytest.raises(InvalidPrefixError) as info:
        service.generate_id("CUS-1")
    assert str(info.value) == "Prefix can only contain uppercase letters, numbers, and underscores"


def test_unknown_prefix_refused_when_not_created_on_first_use(repo: FakeRepository) -> None:
    service = SyncIdManagerService(repo, ServiceOptions(create_missing=False))
    with pytest.raises(PrefixNotFoundError, match="VEN"):
        service.generate_id("VEN")
    assert repo.rows == {}
    service.configure_prefix("VEN")
    assert service.generate_id("VEN") == "VEN-AAA0001"


def test_scopes_are_separate_sequences(service: SyncIdManagerService) -> None:
    assert service.generate_id("CUS", scope="tenant-a") == "CUS-AAA0001"
    assert service.generate_id("CUS", scope="tenant-a") == "CUS-AAA0002"
    assert service.generate_id("CUS", scope="tenant-b") == "CUS-AAA0001"
    assert service.generate_id("CUS") == "CUS-AAA0001"


def test_storage_errors_reach_the_caller(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    repo.fail = StorageError("Database unavailable: connection refused")
    with pytest.raises(StorageError, match="connection refused"):
        service.generate_id("CUS")


# --- activation -------------------------------------------------------------------------------


def test_deactivated_prefix_refuses_and_activation_restores(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    service.generate_id("WH")
    assert service.deactivate_prefix("WH").is_active is False
    with pytest.raises(PrefixInactiveError, match="WH"):
        service.generate_id("WH")
    with pytest.raises(PrefixInactiveError):
        service.bulk_generate_ids("WH", 5)
    assert repo.rows["", "WH"].last_value == 1
    service.deactivate_prefix("WH")  # already inactive: no second audit entry
    assert service.activate_prefix("WH").is_active is True
    assert service.generate_id("WH") == "WH-AAA0002"
    assert [(e.prefix, e.action, e.actor) for e in repo.entries()] == [
        ("WH", "create", "alice"),
        ("WH", "deactivate", "alice"),
        ("WH", "activate", "alice"),
    ]


def test_activating_an_unknown_prefix_is_not_found(service: SyncIdManagerService) -> None:
    with pytest.raises(PrefixNotFoundError):
        service.activate_prefix("NOPE")
    with pytest.raises(PrefixNotFoundError):
        service.deactivate_prefix("NOPE")


# --- reset ------------------------------------------------------------------------------------


def test_seed_reset_example(service: SyncIdManagerService, repo: FakeRepository) -> None:
    result = service.reset_sequence("TEST", "TEST-ZZZ9999")
    assert (result.previous_id, result.latest_id, result.next_id) == (
        None,
        "TEST-ZZZ9999",
        "TEST-AAAA0001",
    )
    assert service.generate_id("TEST") == "TEST-AAAA0001"
    registered, reset = repo.entries()
    assert (registered.action, registered.actor) == ("register", "alice")
    assert (reset.prefix, reset.action, reset.old_value, reset.new_value, reset.actor) == (
        "TEST",
        "reset",
        0,
        THREE_LETTERS,
        "alice",
    )


def test_backwards_reset_refused_unless_forced(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    service.bulk_generate_ids("TEST", 3)
    before, audited = repo.snapshot(), len(repo.audit)
    with pytest.raises(ResetRefusedError, match="force=True"):
        service.reset_sequence("TEST", "TEST-AAA0001")
    assert repo.snapshot() == before
    assert len(repo.audit) == audited
    result = service.reset_sequence("TEST", "TEST-AAA0001", force=True)
    assert (result.previous_id, result.next_id, result.forced) == (
        "TEST-AAA0003",
        "TEST-AAA0002",
        True,
    )
    assert service.generate_id("TEST") == "TEST-AAA0002"
    assert [(e.action, e.old_value, e.new_value, e.detail) for e in repo.entries()] == [
        (
            "create",
            None,
            3,
            "created on first use, first ID TEST-AAA0001 (separator '-', 3 letters, 4 digits)",
        ),
        ("reset", 3, 1, "forced"),
    ]


def test_reset_to_none_restarts_only_with_force_once_issued(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    assert service.reset_sequence("NEW").next_id == "NEW-AAA0001"  # nothing issued: allowed
    service.bulk_generate_ids("NEW", 2)
    with pytest.raises(ResetRefusedError):
        service.reset_sequence("NEW", None)
    assert service.get_current_id("NEW") == "NEW-AAA0002"
    assert service.reset_sequence("NEW", None, True).latest_id is None
    assert service.generate_id("NEW") == "NEW-AAA0001"
    resets = [(e.old_value, e.new_value) for e in repo.entries() if e.action == "reset"]
    assert resets == [(0, 0), (2, 0)]


def test_dry_run_changes_nothing(service: SyncIdManagerService, repo: FakeRepository) -> None:
    service.generate_id("REC")
    before, audited = repo.snapshot(), len(repo.audit)
    result = service.reset_sequence("REC", "REC-AAB0000", dry_run=True)
    assert (result.latest_id, result.next_id, result.dry_run) == (
        "REC-AAA9999",
        "REC-AAB0001",
        True,
    )
    unknown = service.reset_sequence("GHOST", "GHOST-AAA0009", dry_run=True)
    assert unknown.next_id == "GHOST-AAA0010"
    with pytest.raises(ResetRefusedError):
        service.reset_sequence("REC", None, dry_run=True)
    assert repo.snapshot() == before
    assert len(repo.audit) == audited


def test_reset_to_another_prefix_is_refused(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    service.generate_id("RST")
    with pytest.raises(InvalidIdError) as info:
        service.reset_sequence("RST", "CUS-AAA0005")
    assert str(info.value) == "Reset ID must start with 'RST-'"
    assert repo.rows["", "RST"].last_value == 1
    assert [e.action for e in repo.entries()] == ["create"]


# --- configuration and statistics ---------------------------------------------------------------


def test_format_can_change_until_ids_are_issued(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    digits = IdFormat(separator="", letter_width=0, digit_width=6)
    service.configure_prefix("ORD")
    service.configure_prefix("ORD", fmt=digits)
    assert service.generate_id("ORD") == "ORD000001"
    with pytest.raises(FormatLockedError, match="ORD"):
        service.configure_prefix("ORD", fmt=IdFormat())
    assert repo.rows["", "ORD"].format == digits
    service.configure_prefix("ORD", fmt=digits)  # the same format is not a change
    assert service.configure_prefix("ORD", latest_id="ORD000100").next_id == "ORD000101"


def test_stats_of_unknown_and_known_prefixes(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    stats = service.get_prefix_stats("UOM")
    assert stats.exists is False
    assert (stats.latest_id, stats.next_id, stats.count_issued) == (None, "UOM-AAA0001", 0)
    assert repo.rows == {}
    service.bulk_generate_ids("UOM", 4)
    stats = service.get_prefix_stats("UOM")
    assert (stats.exists, stats.latest_id, stats.count_issued) == (True, "UOM-AAA0004", 4)
    assert stats.created_by == "alice"
    service.bulk_generate_ids("PKG", 6)
    assert service.get_service_stats() == ServiceStats(prefix_count=2, total_issued=10)


def test_get_all_prefixes_lists_user_prefixes_in_order(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    for prefix in ("VEN", "CUS", "INVY"):
        service.generate_id(prefix)
    service.deactivate_prefix("INVY")
    repo.insert(IdManager("_HEALTH_CHECK_"))  # a leftover from an older version
    assert [m.prefix for m in service.get_all_prefixes()] == ["CUS", "INVY", "VEN"]
    assert [m.prefix for m in service.get_all_prefixes(active_only=True)] == ["CUS", "VEN"]
    assert [m.prefix for m in service.get_all_prefixes(skip=1, limit=1)] == ["INVY"]
    assert service.get_service_stats().prefix_count == 3
    with pytest.raises(InvalidInputError):
        service.get_all_prefixes(skip=-1)


# --- health -----------------------------------------------------------------------------------


def test_health_check_in_the_seed_shape(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    service.generate_id("CUS")
    before = repo.snapshot()
    for _ in range(2):  # it can run forever: it changes nothing
        health = service.health_check()
        assert health.healthy
        assert health["status"] == "healthy"
        assert health["message"] == "ID Manager service is operational"
        assert health["prefix_count"] == 1
        assert health["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"
        assert repo.snapshot() == before
    timestamp = health["timestamp"]
    assert timestamp.endswith("Z")
    parsed = datetime.fromisoformat(timestamp[:-1] + "+00:00")
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


def test_health_check_reports_storage_errors(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    repo.fail = StorageError("Database unavailable: connection refused")
    health = service.health_check()
    assert health["status"] == "unhealthy"
    assert health["message"] == "ID Manager service error: Database unavailable: connection refused"
    assert health["error_type"] == "StorageError"
    assert health["timestamp"].endswith("Z")


# --- the async service ------------------------------------------------------------------------


async def test_async_service_generates_and_bulks(repo: FakeRepository) -> None:
    service = IdManagerService(repo, ServiceOptions(max_count=100))
    assert await service.generate_id("PUR") == "PUR-AAA0001"
    repo.calls.clear()
    assert await service.bulk_generate_ids("PUR", 3) == [
        "PUR-AAA0002",
        "PUR-AAA0003",
        "PUR-AAA0004",
    ]
    assert repo.calls.count("allocate") == 1
    assert await service.get_current_id("PUR") == "PUR-AAA0004"
    with pytest.raises(InvalidCountError, match="Count must be greater than 0"):
        await service.bulk_generate_ids("PUR", 0)
    with pytest.raises(InvalidCountError, match="100"):
        await service.bulk_generate_ids("PUR", 101)


async def test_async_service_reset_and_activation(repo: FakeRepository) -> None:
    service = IdManagerService(repo)
    await service.reset_sequence("TEST", "TEST-ZZZ9999")
    assert await service.generate_id("TEST") == "TEST-AAAA0001"
    with pytest.raises(ResetRefusedError):
        await service.reset_sequence("TEST", "TEST-AAA0001")
    await service.deactivate_prefix("TEST")
    with pytest.raises(PrefixInactiveError):
        await service.generate_id("TEST")
    await service.activate_prefix("TEST")
    assert await service.generate_id("TEST") == "TEST-AAAA0002"
    assert [p.prefix for p in await service.get_all_prefixes()] == ["TEST"]
    assert (await service.get_prefix_stats("TEST")).count_issued == THREE_LETTERS + 2


async def test_async_health_check(repo: FakeRepository) -> None:
    service = IdManagerService(repo)
    health = await service.health_check()
    assert (health["status"], health["prefix_count"], health["test_id_generated"]) == (
        "healthy",
        0,
        "_HEALTH_CHECK_-AAA0001",
    )
    assert repo.rows == {}
    repo.fail = StorageError("Database unavailable: timeout")
    health = await service.health_check()
    assert (health["status"], health["error_type"]) == ("unhealthy", "StorageError")


# --- refused changes leave nothing behind -----------------------------------------------------


def test_refused_reset_of_unknown_prefix_creates_nothing(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    with pytest.raises(InvalidIdError):
        service.reset_sequence("NEW", "garbage")
    assert repo.snapshot() == {}
    assert repo.audit == []


def test_refused_configure_of_unknown_prefix_creates_nothing(
    service: SyncIdManagerService, repo: FakeRepository
) -> None:
    with pytest.raises(InvalidIdError):
        service.configure_prefix("NEW2", latest_id="NEW2-AA#1")
    assert repo.snapshot() == {}


def test_forced_is_reported_only_when_the_reset_went_backwards(
    service: SyncIdManagerService,
) -> None:
    service.bulk_generate_ids("FRC", 5)
    assert service.reset_sequence("FRC", "FRC-AAA0009", force=True).forced is False
    assert service.reset_sequence("FRC", "FRC-AAA0002", force=True).forced is True


def test_read_id_uses_the_stored_format_of_its_prefix(service: SyncIdManagerService) -> None:
    service.configure_prefix("DOC", fmt=IdFormat(separator="", letter_width=0, digit_width=6))
    assert service.read_id("doc42", prefix="DOC").normalized == "DOC000042"
    assert service.read_id("cus-aab12").normalized == "CUS-AAB0012"  # unknown: default format
    with pytest.raises(InvalidIdError):
        service.read_id("DOC42")  # no separator: the prefix must be named


def test_huge_skip_is_bad_input_not_a_crash(service: SyncIdManagerService) -> None:
    with pytest.raises(InvalidInputError, match="skip and limit"):
        service.get_all_prefixes(skip=2**70)


def test_the_audit_trail_refuses_cursors_and_times_it_cannot_hold(
    service: SyncIdManagerService,
) -> None:
    service.generate_id("CUS")
    assert [e.prefix for e in service.list_audit(before=2**63 - 1).items] == ["CUS"]
    for bad in (
        {"before": 2**64},  # past any database's 64-bit integer
        {"since": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},  # no UTC time
        {"until": datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=23)))},
    ):
        with pytest.raises(InvalidInputError):
            service.list_audit(**bad)


def test_a_legacy_import_continues_in_the_seeds_format_whatever_the_default(
    repo: FakeRepository,
) -> None:
    """The seed wrote ORD-AAA0042: the imported sequence goes on with ORD-AAA0043, even where
    new sequences are made in another format."""
    from idmanager.application.legacy import LegacyRow, apply_row, plan_row

    service = SyncIdManagerService(repo, ServiceOptions(default_format=IdFormat("/", 2, 6)))
    apply_row(service, plan_row(LegacyRow("ORD", "ORD-AAA0042")))
    assert service.generate_id("ORD") == "ORD-AAA0043"
    assert service.generate_id("NEW") == "NEW/AA000001"
