"""Period templates: each period its own sequence, resolved from the document's date."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from idmanager import (
    InvalidPrefixError,
    InvalidScopeError,
    ServiceOptions,
    SyncIdManagerService,
    parse_id,
)
from idmanager.domain.period import fiscal_year, resolve_prefix

from .fakes import FakeRepository


@pytest.mark.parametrize(
    ("template", "on", "expected"),
    [
        ("INV{YYYY}", date(2026, 12, 31), "INV2026"),
        ("INV{YYYY}", date(2027, 1, 1), "INV2027"),
        ("so{yy}{MM}", date(2027, 1, 5), "SO2701"),
        ("D{YYYY}{MM}{DD}", date(2026, 2, 3), "D20260203"),
        ("PLAIN", date(2026, 1, 1), "PLAIN"),
    ],
)
def test_tokens_resolve_from_the_date(template: str, on: date, expected: str) -> None:
    assert resolve_prefix(template, on) == expected


def test_the_year_boundary_is_taken_in_utc() -> None:
    last_minute = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert resolve_prefix("INV{YYYY}", last_minute) == "INV2026"
    assert resolve_prefix("INV{YYYY}", last_minute + timedelta(minutes=1)) == "INV2027"
    # 00:30 on 1 January in UTC+1 is still 2026 in UTC.
    plus_one = datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert resolve_prefix("INV{YYYY}", plus_one) == "INV2026"


def test_fiscal_year_is_named_by_the_year_it_ends() -> None:
    assert fiscal_year(date(2026, 3, 31), 4) == 2026
    assert fiscal_year(date(2026, 4, 1), 4) == 2027
    assert fiscal_year(date(2026, 12, 31), 1) == 2026
    assert resolve_prefix("FY{FY}", date(2026, 4, 1), fiscal_year_start=4) == "FY2027"
    assert resolve_prefix("FY{FY}", date(2026, 3, 31), fiscal_year_start=4) == "FY2026"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("INV{XX}", "Unknown date token {XX}"),
        ("INV{}", "Unknown date token {}"),
        ("INV{YYYY", "Unbalanced braces"),
        ("INVYYYY}", "Unbalanced braces"),
        ("{YYYY}-", "resolves to '2026-'"),
        ("{YYYY}" * 64, "cannot exceed 255 characters"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template: str, message: str) -> None:
    with pytest.raises(InvalidPrefixError, match=message.replace("{", r"\{").replace("(", r"\(")):
        resolve_prefix(template, date(2026, 1, 1))


def test_bad_fiscal_start_is_refused() -> None:
    with pytest.raises(InvalidPrefixError, match="between 1 and 12"):
        resolve_prefix("FY{FY}", date(2026, 1, 1), fiscal_year_start=13)


def test_each_period_is_its_own_sequence_and_back_dated_documents_join_theirs() -> None:
    service = SyncIdManagerService(FakeRepository())
    assert service.generate_id("INV{YYYY}", on=date(2026, 12, 31)) == "INV2026-AAA0001"
    assert service.generate_id("INV{YYYY}", on=date(2027, 1, 1)) == "INV2027-AAA0001"
    assert service.generate_id("INV{YYYY}", on=date(2026, 6, 30)) == "INV2026-AAA0002"
    parsed = parse_id("INV2026-AAA0002")
    assert (parsed.prefix, parsed.ordinal) == ("INV2026", 2)


def test_fiscal_start_is_a_service_option() -> None:
    service = SyncIdManagerService(FakeRepository(), ServiceOptions(fiscal_year_start=4))
    assert service.generate_id("FY{FY}", on=date(2026, 4, 1)) == "FY2027-AAA0001"
    assert service.generate_id("FY{FY}", on=date(2026, 3, 31)) == "FY2026-AAA0001"


def test_scopes_are_independent_sequences() -> None:
    service = SyncIdManagerService(FakeRepository())
    assert service.generate_id("CUS", scope="acme") == "CUS-AAA0001"
    assert service.generate_id("CUS", scope="globex") == "CUS-AAA0001"
    assert service.generate_id("CUS", scope="acme") == "CUS-AAA0002"
    assert service.get_current_id("CUS") is None


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("x" * 256, "Scope cannot exceed 255 characters"),
        ("acme corp", "Scope can only contain"),
        ("acme'; DROP TABLE id_managers;--", "Scope can only contain"),
        ("tenant\n", "Scope can only contain"),
    ],
)
def test_bad_scopes_are_refused_and_change_nothing(scope: str, message: str) -> None:
    repo = FakeRepository()
    with pytest.raises(InvalidScopeError, match=message):
        SyncIdManagerService(repo).generate_id("CUS", scope=scope)
    assert repo.snapshot() == {}
