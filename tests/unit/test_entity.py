"""The ``IdManager`` entity: derived IDs, guarded resets, width usage and count checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idmanager import (
    IdFormat,
    IdManager,
    InvalidCountError,
    InvalidIdError,
    InvalidPrefixError,
    ResetRefusedError,
    SequenceStats,
    format_id,
    parse_id,
)
from idmanager.application.results import to_json
from idmanager.domain.entity import WIDTH_WARNING_RATIO, check_count

THREE_LETTERS = 26**3 * 9999  # IDs from AAA0001 to ZZZ9999


def test_new_sequence_has_no_latest_and_starts_at_aaa0001() -> None:
    manager = IdManager("CUS")
    assert (manager.last_value, manager.latest_id, manager.next_id) == (0, None, "CUS-AAA0001")


@pytest.mark.parametrize(
    ("last_value", "latest", "following"),
    [
        (1, "CUS-AAA0001", "CUS-AAA0002"),
        (9999, "CUS-AAA9999", "CUS-AAB0001"),
        (THREE_LETTERS, "CUS-ZZZ9999", "CUS-AAAA0001"),
    ],
)
def test_latest_and_next_derive_from_last_value(
    last_value: int, latest: str, following: str
) -> None:
    manager = IdManager("CUS", last_value=last_value)
    assert (manager.latest_id, manager.next_id) == (latest, following)


def test_latest_and_next_follow_the_prefix_format() -> None:
    manager = IdManager("P", last_value=9999, format=IdFormat("", 0, 4))
    assert (manager.latest_id, manager.next_id) == ("P9999", "P10000")


@given(st.integers(1, 10**12), st.integers(1, 500))
def test_issued_is_the_run_ending_at_last_value(last_value: int, count: int) -> None:
    count = min(count, last_value)
    issued = IdManager("INV", last_value=last_value).issued(count)
    assert len(issued) == count
    assert issued[-1] == format_id("INV", last_value)
    assert issued[0] == format_id("INV", last_value - count + 1)


def test_issued_across_a_block() -> None:
    assert IdManager("CUS", last_value=10_001).issued(3) == [
        "CUS-AAA9999",
        "CUS-AAB0001",
        "CUS-AAB0002",
    ]


# --- reset_target -----------------------------------------------------------------------------


def test_reset_forward_returns_the_new_last_value() -> None:
    manager = IdManager("TEST", last_value=5)
    assert manager.reset_target("TEST-ZZZ9999", force=False) == THREE_LETTERS
    assert manager.reset_target("TEST-AAA0005", force=False) == 5  # staying put is not backwards


def test_reset_target_applies_the_format_correction() -> None:
    manager = IdManager("TEST")
    assert manager.reset_target("  test-aab12 ", force=False) == 9999 + 12
    assert manager.reset_target("TEST-AAB0000", force=False) == 9999


def test_reset_backwards_is_refused_unless_forced() -> None:
    manager = IdManager("TEST", last_value=10_000)
    with pytest.raises(ResetRefusedError) as info:
        manager.reset_target("TEST-AAA0005", force=False)
    message = str(info.value)
    assert "TEST-AAA0005" in message and "TEST-AAB0001" in message and "force=True" in message
    assert manager.last_value == 10_000  # the entity only computes; it changes nothing
    assert manager.reset_target("TEST-AAA0005", force=True) == 5


def test_reset_to_none_restarts() -> None:
    assert IdManager("TEST").reset_target(None, force=False) == 0
    issued = IdManager("TEST", last_value=3)
    with pytest.raises(ResetRefusedError, match="the start"):
        issued.reset_target(None, force=False)
    assert issued.reset_target(None, force=True) == 0


@pytest.mark.parametrize("value", ["CUS-AAA0001", "RSTX-AAA0001", "AAA0001", "", "RST"])
def test_reset_to_another_prefix_names_the_expected_prefix(value: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        IdManager("RST").reset_target(value, force=True)
    assert str(info.value) == "Reset ID must start with 'RST-'"


def test_reset_to_a_bad_id_of_the_prefix_names_the_value() -> None:
    with pytest.raises(InvalidIdError, match=r"'RST-AA#1'.*expected letters"):
        IdManager("RST").reset_target("RST-AA#1", force=True)
    with pytest.raises(InvalidIdError, match="before the first ID"):
        parse_id("RST-AAA0000", lenient=True)  # an ID it is not: no ID is numbered 0


def test_the_id_just_before_the_first_is_nothing_issued() -> None:
    """SPEC: ``CUS-AAB0000`` means "just before CUS-AAB0001"; so ``…AAA0000`` as a latest
    ID is "nothing issued yet", a reset to the start (as the legacy import reads it)."""
    manager = IdManager("RST", last_value=5)
    assert manager.reset_target("RST-AAA0000", force=True) == 0
    assert manager.reset_target(" rst-aaa0 ", force=True) == 0
    assert manager.reset_target("RST-AAB0000", force=True) == 9999
    with pytest.raises(ResetRefusedError):
        manager.reset_target("RST-AAA0000", force=False)  # backwards: force, as ever


def test_reset_to_a_non_string_is_an_invalid_id() -> None:
    with pytest.raises(InvalidIdError):
        IdManager("RST").reset_target(42, force=True)


def test_reset_uses_the_prefix_format() -> None:
    manager = IdManager("RST", format=IdFormat(separator="", letter_width=0, digit_width=6))
    assert manager.reset_target("RST000042", force=False) == 42
    with pytest.raises(InvalidIdError, match=r"^Reset ID must start with 'RST'$"):
        manager.reset_target("XYZ000042", force=False)


# --- width usage and statistics ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_value", "usage"),
    [
        (0, 0.0),
        (THREE_LETTERS // 2, 0.5),
        (THREE_LETTERS, 1.0),
        (THREE_LETTERS + 26**4 * 9999, 1.0),
        (THREE_LETTERS + 26**4 * 9999 // 4, 0.25),
    ],
)
def test_width_usage(last_value: int, usage: float) -> None:
    assert IdManager("CUS", last_value=last_value).width_usage() == pytest.approx(usage)


def test_width_usage_restarts_small_after_a_width_change() -> None:
    usage = IdManager("CUS", last_value=THREE_LETTERS + 1).width_usage()
    assert 0 < usage < 1e-6


@pytest.mark.parametrize(
    ("last_value", "usage"), [(0, 0.0), (9999, 1.0), (10_000, 10_000 / 99_999)]
)
def test_width_usage_of_digits_only(last_value: int, usage: float) -> None:
    fmt = IdFormat(letter_width=0)
    assert IdManager("P", last_value=last_value, format=fmt).width_usage() == pytest.approx(usage)


def test_stats_describe_the_sequence() -> None:
    created = datetime(2025, 6, 28, 11, 30, tzinfo=UTC)
    manager = IdManager(
        "CUS", last_value=10_000, created_at=created, updated_at=created, created_by="ops"
    )
    assert to_json(SequenceStats.of(manager)) == {
        "prefix": "CUS",
        "scope": "",
        "exists": True,
        "latest_id": "CUS-AAB0001",
        "next_id": "CUS-AAB0002",
        "count_issued": 10_000,
        "is_active": True,
        "format": {"separator": "-", "letter_width": 3, "digit_width": 4},
        "template": None,
        "created_at": "2025-06-28T11:30:00Z",
        "updated_at": "2025-06-28T11:30:00Z",
        "created_by": "ops",
        "width_usage": pytest.approx(10_000 / THREE_LETTERS),
        "warning": None,
    }


def test_stats_warn_near_the_end_of_a_letter_width() -> None:
    below = IdManager("CUS", last_value=int(THREE_LETTERS * WIDTH_WARNING_RATIO) - 1)
    assert below.width_warning() is None
    near = IdManager("CUS", last_value=int(THREE_LETTERS * 0.95))
    assert near.width_warning() == "CUS has used 95% of its current letter width"
    assert SequenceStats.of(near).warning == near.width_warning()
    assert IdManager("CUS", last_value=THREE_LETTERS + 5).width_warning() is None


def test_the_entity_refuses_a_bad_prefix_with_the_seed_messages() -> None:
    with pytest.raises(InvalidPrefixError, match=r"^Prefix cannot be empty$"):
        IdManager("")
    with pytest.raises(
        InvalidPrefixError,
        match=r"^Prefix can only contain uppercase letters, numbers, and underscores$",
    ):
        IdManager("test-invalid")
    assert IdManager(" test ").prefix == "TEST"


def test_a_sequence_reads_as_its_prefix_and_latest_id() -> None:
    assert str(IdManager("TEST", last_value=1)) == "TEST: TEST-AAA0001"
    assert str(IdManager("TEST")) == "TEST: no ID issued yet"
    assert str(IdManager("CUS", "acme", last_value=2)) == "CUS (scope acme): CUS-AAA0002"


# --- check_count ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 1000])
def test_valid_counts_pass(count: int) -> None:
    assert check_count(count, 1000) == count


@pytest.mark.parametrize("count", [0, -1, -(10**9)])
def test_count_below_one(count: int) -> None:
    with pytest.raises(InvalidCountError) as info:
        check_count(count, 1000)
    assert str(info.value) == "Count must be greater than 0"


def test_count_above_the_maximum_names_the_limit() -> None:
    with pytest.raises(InvalidCountError) as info:
        check_count(1_000_001, 1_000_000)
    assert "1,000,000" in str(info.value) and "1,000,001" in str(info.value)


@pytest.mark.parametrize("count", [True, False, 1.0, "3", None])
def test_count_must_be_an_integer(count: object) -> None:
    with pytest.raises(InvalidCountError, match="must be an integer"):
        check_count(count, 1000)
