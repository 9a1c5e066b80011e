"""The ID format: ordinal arithmetic, the seed's increment rule, ranges and lenient parsing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from idmanager import (
    DEFAULT_FORMAT,
    IdFormat,
    IdManagerError,
    IdRange,
    InvalidFormatError,
    InvalidIdError,
    InvalidPrefixError,
    format_id,
    format_ids,
    normalize_prefix,
    parse_id,
)
from idmanager.domain.format import MAX_ORDINAL, block_letters, collision, letters_block

SEPARATORS = ["", "-", ".", "/", ":", "#"]
PER_BLOCK = 9999
THREE_LETTERS_END = 26**3 * PER_BLOCK  # ordinal of ZZZ9999

prefixes = st.from_regex(r"[A-Z0-9_]{1,12}", fullmatch=True)
formats = st.builds(
    IdFormat,
    separator=st.sampled_from(SEPARATORS),
    letter_width=st.integers(0, 4),
    digit_width=st.integers(1, 6),
)
ordinals = st.integers(1, 10**13)


def near_boundaries(fmt: IdFormat = DEFAULT_FORMAT) -> st.SearchStrategy[int]:
    """Ordinals next to the end of a letter block or of a letter width."""
    if fmt.letter_width == 0:
        ends = st.integers(1, 12).map(lambda k: 10**k - 1)
    else:
        blocks = st.one_of(
            st.integers(1, 10**6),
            st.integers(0, 3).map(lambda k: sum(26 ** (fmt.letter_width + i) for i in range(k))),
        )
        ends = blocks.map(lambda b: max(b, 1) * fmt.per_block)
    return st.tuples(ends, st.integers(-2, 2)).map(lambda t: max(1, t[0] + t[1]))


def parse(text: str, fmt: IdFormat, prefix: str, *, lenient: bool = False) -> int:
    return parse_id(text, lenient=lenient, fmt=fmt, prefix=prefix).ordinal


def successor(letters: str, number: int, digit_width: int = 4) -> tuple[str, int]:
    """The seed's rule, written independently: digits first, then letters carry right to left."""
    if not letters or number < 10**digit_width - 1:
        return letters, number + 1
    chars = list(letters)
    for i in reversed(range(len(chars))):
        if chars[i] != "Z":
            chars[i] = chr(ord(chars[i]) + 1)
            return "".join(chars), 1
        chars[i] = "A"
    return "A" * (len(letters) + 1), 1


# --- the seed's and the SPEC's examples -------------------------------------------------------


def test_first_id_of_a_prefix() -> None:
    assert format_id("PREFIX", 1) == "PREFIX-AAA0001"


@pytest.mark.parametrize(
    ("ordinal", "expected"),
    [
        (9999, "CUS-AAA9999"),
        (10_000, "CUS-AAB0001"),
        (26 * PER_BLOCK, "CUS-AAZ9999"),
        (26 * PER_BLOCK + 1, "CUS-ABA0001"),
        (THREE_LETTERS_END, "CUS-ZZZ9999"),
        (THREE_LETTERS_END + 1, "CUS-AAAA0001"),
    ],
)
def test_spec_ordinals(ordinal: int, expected: str) -> None:
    assert format_id("CUS", ordinal) == expected
    assert parse_id(expected).ordinal == ordinal


def test_aaaa_is_block_17576() -> None:
    assert block_letters(17_576, 3) == "AAAA"
    assert letters_block("AAAA", 3) == 17_576
    assert block_letters(17_575, 3) == "ZZZ"


@pytest.mark.parametrize(
    ("latest", "following"),
    [("AAA9999", "AAB0001"), ("AAZ9999", "ABA0001"), ("ZZZ9999", "AAAA0001")],
)
def test_seed_sequence_examples(latest: str, following: str) -> None:
    assert format_id("P", parse_id(f"P-{latest}").ordinal + 1) == f"P-{following}"


def test_digits_only_grow_past_their_width() -> None:
    fmt = IdFormat(letter_width=0, digit_width=4)
    assert format_id("P", 9999, fmt) == "P-9999"
    assert format_id("P", 10_000, fmt) == "P-10000"
    assert parse_id("P-10000", fmt=fmt).ordinal == 10_000
    assert format_ids("P", 9998, 3, fmt) == ["P-9998", "P-9999", "P-10000"]


def test_format_rejects_ordinals_below_one() -> None:
    with pytest.raises(InvalidIdError):
        format_id("CUS", 0)
    with pytest.raises(InvalidIdError):
        format_ids("CUS", 0, 1)


# --- properties -------------------------------------------------------------------------------


@given(st.one_of(ordinals, near_boundaries()))
def test_default_round_trip(ordinal: int) -> None:
    text = format_id("CUS", ordinal)
    parsed = parse_id(text)
    assert (parsed.ordinal, parsed.normalized, parsed.prefix) == (ordinal, text, "CUS")
    assert text == f"CUS-{parsed.letters}{parsed.number:04d}"


@given(prefixes, formats, st.data())
def test_round_trip_any_format(prefix: str, fmt: IdFormat, data: st.DataObject) -> None:
    ordinal = data.draw(st.one_of(ordinals, near_boundaries(fmt)))
    text = format_id(prefix, ordinal, fmt)
    parsed = parse_id(text, fmt=fmt, prefix=prefix)
    assert (parsed.ordinal, parsed.normalized, parsed.prefix) == (ordinal, text, prefix)
    if fmt.separator:  # with a separator the prefix can be read without being told
        assert parse_id(text, fmt=fmt).ordinal == ordinal


@given(prefixes, formats, st.data())
def test_successor_follows_the_seed_rule(prefix: str, fmt: IdFormat, data: st.DataObject) -> None:
    ordinal = data.draw(st.one_of(ordinals, near_boundaries(fmt)))
    parsed = parse_id(format_id(prefix, ordinal, fmt), fmt=fmt, prefix=prefix)
    letters, number = successor(parsed.letters, parsed.number, fmt.digit_width)
    digits = f"{number:0{fmt.digit_width}d}"
    assert format_id(prefix, ordinal + 1, fmt) == f"{prefix}{fmt.separator}{letters}{digits}"


@given(st.integers(3, 5), st.data())
def test_order_is_string_order_within_a_letter_width(width: int, data: st.DataObject) -> None:
    start = sum(26**w for w in range(3, width)) * PER_BLOCK + 1
    end = start + 26**width * PER_BLOCK - 1
    a, b = data.draw(st.lists(st.integers(start, end), min_size=2, max_size=2, unique=True))
    assert (a < b) == (format_id("CUS", a) < format_id("CUS", b))


@given(formats, st.integers(1, 10**9), st.integers(1, 10**9))
def test_order_is_string_order_for_equal_lengths(fmt: IdFormat, a: int, b: int) -> None:
    x, y = format_id("P", a, fmt), format_id("P", b, fmt)
    if len(x) == len(y):  # same letter width (or digit count, for digits only)
        assert (a < b) == (x < y)


@settings(max_examples=60)
@given(st.data())
def test_format_ids_matches_format_id(data: st.DataObject) -> None:
    fmt = data.draw(st.one_of(st.just(DEFAULT_FORMAT), formats.filter(lambda f: f.digit_width < 4)))
    first = data.draw(st.one_of(st.integers(1, 10**9), near_boundaries(fmt)))
    count = data.draw(st.integers(0, 1500))
    expected = [format_id("INV", n, fmt) for n in range(first, first + count)]
    assert format_ids("INV", first, count, fmt) == expected
    id_range = IdRange("INV", first, count, fmt)
    assert list(id_range) == expected
    assert [i for chunk in id_range.chunks() for i in chunk] == expected
    most = data.draw(st.integers(1, 300))
    chunks = list(id_range.chunks(most))
    assert [i for chunk in chunks for i in chunk] == expected
    assert all(0 < len(chunk) <= most for chunk in chunks)


# --- IdRange ----------------------------------------------------------------------------------


def test_id_range_across_a_width_change() -> None:
    first = THREE_LETTERS_END - 1
    r = IdRange("CUS", first, 3)
    assert (len(r), r.prefix, r.first, r.size, r.last) == (3, "CUS", first, 3, first + 2)
    assert r.format == DEFAULT_FORMAT
    assert list(r) == ["CUS-ZZZ9998", "CUS-ZZZ9999", "CUS-AAAA0001"]
    assert r[0] == "CUS-ZZZ9998"
    assert r[-1] == "CUS-AAAA0001"
    assert r[-3] == r[0]
    assert list(r.chunks()) == [["CUS-ZZZ9998", "CUS-ZZZ9999"], ["CUS-AAAA0001"]]
    for bad in (3, -4):
        with pytest.raises(IndexError):
            r[bad]


@given(st.integers(0, 40), st.data())
def test_id_range_slices_like_a_list(size: int, data: st.DataObject) -> None:
    first = data.draw(near_boundaries())
    r = IdRange("SAL", first, size)
    expected = [format_id("SAL", n) for n in range(first, first + size)]
    s = data.draw(st.slices(size))
    assert r[s] == expected[s]
    assert r[:] == expected


def test_id_range_equality_and_repr() -> None:
    r = IdRange("PUR", 1, 3)
    ids = ["PUR-AAA0001", "PUR-AAA0002", "PUR-AAA0003"]
    assert r == IdRange("PUR", 1, 3)
    assert hash(r) == hash(IdRange("PUR", 1, 3))
    assert r == ids
    assert r == tuple(ids)
    assert r != IdRange("PUR", 2, 3)
    assert r != IdRange("PUR", 1, 3, IdFormat(separator="."))
    assert r != ids[:2]
    assert r != "PUR-AAA0001"
    assert repr(r) == "IdRange('PUR-AAA0001' .. 'PUR-AAA0003', count=3)"
    empty = IdRange("PUR", 5, 0)
    assert (len(empty), list(empty), empty[:], list(empty.chunks())) == (0, [], [], [])
    assert repr(empty) == "IdRange('PUR', empty)"


@pytest.mark.parametrize(("first", "count"), [(0, 1), (-5, 1), (1, -1)])
def test_id_range_rejects_bad_bounds(first: int, count: int) -> None:
    with pytest.raises(InvalidIdError):
        IdRange("PUR", first, count)


def test_chunks_hold_one_letter_block_each() -> None:
    chunks = list(IdRange("WH", 9990, 10_020).chunks())
    assert [len(c) for c in chunks] == [10, 9999, 11]
    assert all(len({i[:6] for i in c}) == 1 for c in chunks)


def test_chunks_of_at_most_n_stay_within_a_letter_block() -> None:
    chunks = list(IdRange("WH", 9990, 300).chunks(128))
    assert [len(c) for c in chunks] == [10, 128, 128, 34]
    assert all(len({i[:6] for i in c}) == 1 for c in chunks)
    assert [len(c) for c in IdRange("WH", 1, 300, IdFormat(letter_width=0)).chunks(128)] == [
        128,
        128,
        44,
    ]
    with pytest.raises(ValueError, match="at least one ID"):
        IdRange("WH", 1, 3).chunks(0)


# --- lenient parsing (format correction) ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("  CUS-AAB0012\t\n", "CUS-AAB0012"),
        ("cus-aab0012", "CUS-AAB0012"),
        ("CUS-AAB12", "CUS-AAB0012"),
        ("CUS-AAB00012", "CUS-AAB0012"),
        ("CUS-AAB0000", "CUS-AAA9999"),
        (" cus-aaaa0000 ", "CUS-ZZZ9999"),
        ("CUS-AAB" + "0" * 5000 + "12", "CUS-AAB0012"),
    ],
)
def test_lenient_corrections(text: str, normalized: str) -> None:
    parsed = parse_id(text, lenient=True)
    assert parsed.normalized == normalized
    assert parsed.ordinal == parse_id(normalized).ordinal
    assert (parsed.prefix, parsed.letters, parsed.number) == (
        "CUS",
        normalized[4:-4],
        int(normalized[-4:]),
    )
    with pytest.raises(InvalidIdError, match="Invalid ID"):
        parse_id(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CUSAAA0001", "missing the separator"),
        ("CUS-AA0001", "expected at least 3 letters"),
        ("CUS-AAA", "expected letters A-Z then digits"),
        ("CUS-0001AAA", "expected letters A-Z then digits"),
        ("CUS-AAA10000", "exceeds 9999"),
        ("CU S-AAA0001", "Prefix can only contain"),
        ("-AAA0001", "Prefix cannot be empty"),
        ("CUS-ÄAA0001", "only A-Z"),
        ("cus-\ufb00a0001", "only A-Z"),  # "ﬀ".upper() is "FF": not a correction to make
        ("CUS-AAA" + "1" * 5000, "beyond the last ID"),
        ("CUS-" + "Z" * 30 + "0001", "beyond the last ID"),
    ],
)
def test_unreadable_ids_name_the_value_and_the_reason(text: str, reason: str) -> None:
    for lenient in (True, False):
        with pytest.raises(InvalidIdError) as info:
            parse_id(text, lenient=lenient)
        message = str(info.value)
        assert reason in message
        assert repr(text if len(text) <= 80 else text[:77] + "...") in message


def test_aaa0000_comes_before_the_first_id() -> None:
    with pytest.raises(InvalidIdError, match="'CUS-AAA0000': it comes before the first ID"):
        parse_id("CUS-AAA0000", lenient=True)
    with pytest.raises(InvalidIdError, match="'CUS-AAA0000': expected 4 digits from 0001"):
        parse_id("CUS-AAA0000")
    with pytest.raises(InvalidIdError, match="before the first ID"):
        parse_id("P-0", lenient=True, fmt=IdFormat(letter_width=0))


def test_largest_storable_ordinal_round_trips_and_the_next_is_refused() -> None:
    for fmt in (DEFAULT_FORMAT, IdFormat(letter_width=0), IdFormat(digit_width=1)):
        last = format_id("P", MAX_ORDINAL, fmt)
        assert parse_id(last, fmt=fmt).ordinal == MAX_ORDINAL
        with pytest.raises(InvalidIdError, match="beyond the last ID"):
            parse_id(format_id("P", MAX_ORDINAL + 1, fmt), fmt=fmt)


def test_expected_prefix_is_enforced() -> None:
    assert parse_id("TEST-AAA0001", prefix="TEST").ordinal == 1
    with pytest.raises(InvalidIdError, match="must start with 'TEST-'"):
        parse_id("CUS-AAA0001", prefix="TEST")
    fmt = IdFormat(separator="")
    assert parse_id("TESTAAB0001", fmt=fmt, prefix="TEST").ordinal == 10_000
    with pytest.raises(InvalidIdError, match="prefix must be given"):
        parse_id("TESTAAB0001", fmt=fmt)
    with pytest.raises(InvalidIdError, match="must start with 'TEST'"):
        parse_id("CUSAAB0001", fmt=fmt, prefix="TEST")


def test_non_string_id_is_an_invalid_id() -> None:
    with pytest.raises(InvalidIdError, match="must be a string"):
        parse_id(12345)


# --- prefixes ---------------------------------------------------------------------------------


def test_normalize_prefix_trims_and_upper_cases() -> None:
    assert normalize_prefix("  cus_2 \n") == "CUS_2"
    assert normalize_prefix("A" * 255) == "A" * 255


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Prefix cannot be empty"),
        ("   ", "Prefix cannot be empty"),
        ("CUS-1", "Prefix can only contain uppercase letters, numbers, and underscores"),
        ("C US", "Prefix can only contain uppercase letters, numbers, and underscores"),
        ("straße", "Prefix can only contain uppercase letters, numbers, and underscores"),
        ("\u0131", "Prefix can only contain uppercase letters, numbers, and underscores"),
        ("A" * 256, "Prefix cannot exceed 255 characters"),
    ],
)
def test_prefix_errors_use_the_seed_messages(value: str, message: str) -> None:
    with pytest.raises(InvalidPrefixError) as info:
        normalize_prefix(value)
    assert str(info.value) == message


def test_non_string_prefix_is_an_invalid_prefix() -> None:
    with pytest.raises(InvalidPrefixError):
        normalize_prefix(None)


@settings(max_examples=300)
@given(st.text())
@example("ß")
@example("\x00")
def test_normalize_prefix_only_raises_its_own_errors(text: str) -> None:
    try:
        value = normalize_prefix(text)
    except IdManagerError:
        return
    assert value.isascii() and value == value.strip().upper() and 1 <= len(value) <= 255


@settings(max_examples=300)
@given(
    st.one_of(st.text(), st.text(alphabet="cusCUSaz-AZ0189 _\t\u0130\u017f\ufb00")),
    st.booleans(),
    formats,
    st.one_of(st.none(), prefixes),
)
def test_parse_id_only_raises_its_own_errors(
    text: str, lenient: bool, fmt: IdFormat, prefix: str | None
) -> None:
    try:
        parsed = parse_id(text, lenient=lenient, fmt=fmt, prefix=prefix)
    except IdManagerError:
        return
    assert parse_id(parsed.normalized, fmt=fmt, prefix=parsed.prefix) == parsed


# --- format options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"separator": "_"},
        {"separator": "--"},
        {"separator": "A"},
        {"separator": ["-"]},
        {"letter_width": -1},
        {"letter_width": 9},
        {"letter_width": True},
        {"letter_width": "3"},
        {"digit_width": 0},
        {"digit_width": 13},
        {"digit_width": 1.5},
    ],
)
def test_invalid_format_options(options: dict[str, object]) -> None:
    with pytest.raises(InvalidFormatError):
        IdFormat(**options)


def test_default_format_is_the_seeds() -> None:
    assert IdFormat("-", 3, 4) == DEFAULT_FORMAT
    assert DEFAULT_FORMAT.per_block == PER_BLOCK


# --- no two sequences write one ID (collision) --------------------------------------------------

# Mostly without a separator (the only case where two sequences can meet), at every width.
collision_formats = st.builds(
    IdFormat,
    separator=st.sampled_from(["", "", "", "", "-", "#"]),
    letter_width=st.integers(0, 4),
    digit_width=st.integers(1, 6),
)
# What a longer prefix adds to a shorter one: letters then digits (the shapes that can read
# as the start of a body), or anything a prefix may hold (digits then letters, underscores).
extensions = st.one_of(
    st.from_regex(r"[A-Z]{0,3}[0-9]{0,3}", fullmatch=True).filter(bool),
    st.from_regex(r"[A-Z0-9_]{1,4}", fullmatch=True),
    st.sampled_from(["A", "AA", "AAA", "0", "00", "1", "10", "A0", "A1", "Z9", "_"]),
)


def telling_ordinals(fmt: IdFormat) -> list[int]:
    """Return the ordinals whose IDs have each shape a format can write.

    An ID is read as another sequence's by its shape only (how many letters, how many digits,
    leading zeros): the first and last numbers of a letter block, of each letter width, and
    for digits only, each power of ten and its neighbours.
    """
    found = {1, 2, 9, 10, 11, MAX_ORDINAL}
    if fmt.letter_width == 0:
        for k in range(1, 19):
            found |= {10**k - 1, 10**k, 10**k + 1}
    else:
        numbers = {1, 2, fmt.per_block - 1, fmt.per_block}
        numbers |= {10**k for k in range(fmt.digit_width)} | {10**k - 1 for k in range(2, 7)}
        for extra_letters in range(4):
            first_block = sum(26 ** (fmt.letter_width + i) for i in range(extra_letters))
            for block in (first_block, first_block + 1):
                found |= {block * fmt.per_block + n for n in numbers if 1 <= n <= fmt.per_block}
    return sorted(n for n in found if 1 <= n <= MAX_ORDINAL)


def reads_as(text: str, prefix: str, fmt: IdFormat) -> bool:
    """Return True when ``text`` is, read strictly, an ID of ``prefix`` in ``fmt``."""
    try:
        parse_id(text, fmt=fmt, prefix=prefix)
    except InvalidIdError:
        return False
    return True


def body_start(prefix: str, fmt: IdFormat) -> st.SearchStrategy[str]:
    """Return the start of the body of an ID of ``prefix``: the extensions most likely to
    make a longer prefix write the same IDs."""
    return st.tuples(st.one_of(st.integers(1, 30), near_boundaries(fmt)), st.integers(1, 6)).map(
        lambda t: format_id(prefix, t[0], fmt)[len(prefix) + len(fmt.separator) :][: t[1]]
    )


def alike(fmt: IdFormat) -> st.SearchStrategy[IdFormat]:
    """Return formats without a separator and with widths near ``fmt``'s."""
    return st.builds(
        IdFormat,
        separator=st.just(""),
        letter_width=st.integers(max(0, fmt.letter_width - 2), fmt.letter_width + 2),
        digit_width=st.integers(max(1, fmt.digit_width - 1), min(12, fmt.digit_width + 1)),
    )


def assert_collision_tells_the_truth(
    a: str, fa: IdFormat, b: str, fb: IdFormat, drawn: list[int]
) -> str | None:
    """Check ``collision``: a witness is an ID of both sequences; with none, no ID of one is
    an ID of the other, checked on every shape of ID either writes (:func:`telling_ordinals`)
    and on the ``drawn`` ordinals. Return the witness."""
    witness = collision(a, fa, b, fb)
    assert collision(b, fb, a, fa) == witness  # the order of the two does not matter
    if witness is not None:
        for prefix, fmt in ((a, fa), (b, fb)):
            parsed = parse_id(witness, fmt=fmt, prefix=prefix)
            assert format_id(prefix, parsed.ordinal, fmt) == witness
        return witness
    for (p, fp), (q, fq) in (((a, fa), (b, fb)), ((b, fb), (a, fa))):
        for ordinal in [*telling_ordinals(fp), *drawn]:
            text = format_id(p, ordinal, fp)
            assert not reads_as(text, q, fq), f"{text} is an ID of {q} too ({fq})"
    return None


@settings(max_examples=500, deadline=None)
@given(
    prefixes.map(lambda p: p[:6]),
    collision_formats,
    st.booleans(),
    st.lists(st.integers(1, MAX_ORDINAL), min_size=3, max_size=3),
    st.data(),
)
def test_collision_finds_a_shared_id_or_there_is_none(
    short: str, short_fmt: IdFormat, swapped: bool, drawn: list[int], data: st.DataObject
) -> None:
    """Over prefixes and formats: ``collision`` is right both when it finds an ID and when not."""
    extra = data.draw(st.one_of(extensions, body_start(short, short_fmt)), label="extra")
    long_fmt = data.draw(st.one_of(collision_formats, alike(short_fmt)), label="long_fmt")
    pair = [(short, short_fmt), (short + extra, long_fmt)]
    (a, fa), (b, fb) = reversed(pair) if swapped else pair
    assert_collision_tells_the_truth(a, fa, b, fb, drawn)


@pytest.mark.parametrize(
    ("a", "fa", "b", "fb", "shared"),
    [
        ("COL", IdFormat("", 3, 4), "COLA", IdFormat("", 2, 4), "COLAAA0001"),
        ("COL", IdFormat("", 2, 4), "COLA", IdFormat("", 3, 4), "COLAAAA0001"),
        ("D", IdFormat("", 0, 5), "D0", IdFormat("", 0, 4), "D00001"),
        ("D", IdFormat("", 0, 1), "D1", IdFormat("", 0, 1), "D11"),
        ("COL", IdFormat("", 3, 4), "COLAAA", IdFormat("", 0, 4), "COLAAA0001"),
        ("COL", IdFormat("", 1, 4), "COLA1", IdFormat("", 0, 3), "COLA1001"),
        ("INV", IdFormat("", 0, 4), "INV2026", IdFormat("", 0, 4), "INV20260001"),
        # A separator on either side tells where the prefix ends; so do other digit widths.
        ("COL", IdFormat("-", 3, 4), "COLA", IdFormat("", 2, 4), None),
        ("COL", IdFormat("", 3, 4), "COLA", IdFormat("", 2, 5), None),
        ("D", IdFormat("", 0, 3), "D0", IdFormat("", 0, 4), None),
        ("COL", IdFormat("", 3, 4), "COLA", IdFormat("", 0, 4), None),
        ("COL", IdFormat("", 3, 4), "COL_A", IdFormat("", 3, 4), None),
        ("COL", IdFormat("", 3, 4), "CUS", IdFormat("", 3, 4), None),
    ],
)
def test_collision_examples(a: str, fa: IdFormat, b: str, fb: IdFormat, shared: str | None) -> None:
    assert assert_collision_tells_the_truth(a, fa, b, fb, [1]) == shared
