"""The ID format and its ordinal arithmetic: pure functions of (format, ordinal).

An ID is ``PREFIX`` + separator + letters + zero-padded digits. Its *ordinal* ``n >= 1`` is its
position in the sequence. With ``per_block = 10**digits - 1`` IDs per letter block, block
``(n-1) // per_block`` is written in base 26 (``A`` = 0) at the initial letter width until that
width is used up, then one letter wider, and so on: the sequence never ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

from .errors import InvalidFormatError, InvalidIdError, InvalidPrefixError

MAX_PREFIX_LENGTH = 255
# The largest ordinal storage holds (``last_value`` is a signed 64-bit BIGINT).
MAX_ORDINAL = 2**63 - 1
_PREFIX_RE = re.compile(r"[A-Z0-9_]+")
_SEPARATORS = frozenset({"", "-", ".", "/", ":", "#"})
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTER_VALUE = {c: i for i, c in enumerate(_ALPHABET)}


@dataclass(frozen=True, slots=True)
class IdFormat:
    """How a prefix's IDs are written. The defaults give the seed's ``PREFIX-AAA0001``."""

    separator: str = "-"
    letter_width: int = 3
    digit_width: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.separator, str) or self.separator not in _SEPARATORS:
            allowed = ", ".join(repr(s) for s in sorted(_SEPARATORS))
            raise InvalidFormatError(
                f"Separator {self.separator!r} is not allowed; use one of {allowed}"
            )
        for name, value in (("Letter", self.letter_width), ("Digit", self.digit_width)):
            # bool is an int, and a float width would format garbage: accept exact ints only.
            if type(value) is not int:
                raise InvalidFormatError(f"{name} width must be an integer, got {value!r}")
        if not 0 <= self.letter_width <= 8:
            raise InvalidFormatError(
                f"Letter width must be between 0 and 8, got {self.letter_width}"
            )
        if not 1 <= self.digit_width <= 12:
            raise InvalidFormatError(
                f"Digit width must be between 1 and 12, got {self.digit_width}"
            )

    @property
    def per_block(self) -> int:
        """IDs per letter block: ``0001`` … ``9999`` for four digits."""
        return int(10**self.digit_width) - 1


DEFAULT_FORMAT = IdFormat()


def normalize_prefix(prefix: str) -> str:
    """Trim and upper-case a prefix, then validate it with the seed's messages."""
    if not isinstance(prefix, str):
        raise InvalidPrefixError("Prefix must be a string")
    value = prefix.strip()
    # Check ASCII before upper-casing: "ß".upper() is "SS" and "ı".upper() is "I".
    ascii_only = value.isascii()
    value = value.upper()
    if not value:
        raise InvalidPrefixError("Prefix cannot be empty")
    if len(value) > MAX_PREFIX_LENGTH:
        raise InvalidPrefixError(f"Prefix cannot exceed {MAX_PREFIX_LENGTH} characters")
    if not ascii_only or not _PREFIX_RE.fullmatch(value):
        raise InvalidPrefixError(
            "Prefix can only contain uppercase letters, numbers, and underscores"
        )
    return value


@lru_cache(maxsize=64)
def _width_start(letter_width: int, width: int) -> int:
    """Return the first block written with ``width`` letters."""
    return sum(26**w for w in range(letter_width, width))


@lru_cache(maxsize=1024)
def block_letters(block: int, letter_width: int) -> str:
    """Return the letters of letter block ``block`` (0-based).

    Cached: a sequence stays in one block for ``per_block`` IDs (9,999 at four digits).
    """
    width, start = letter_width, 0
    while block - start >= 26**width:
        start += 26**width
        width += 1
    value = block - start
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 26)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def letters_block(letters: str, letter_width: int) -> int:
    """Return the block number of ``letters`` (inverse of :func:`block_letters`)."""
    value = 0
    for char in letters:
        value = value * 26 + _LETTER_VALUE[char]
    return _width_start(letter_width, len(letters)) + value


def format_id(prefix: str, ordinal: int, fmt: IdFormat = DEFAULT_FORMAT) -> str:
    """Return the ID at position ``ordinal`` (1 is ``PREFIX-AAA0001``)."""
    if ordinal < 1:
        raise InvalidIdError(f"Ordinal must be at least 1, got {ordinal}")
    if fmt.letter_width == 0:
        # Digits only: they grow past their width instead of wrapping.
        return f"{prefix}{fmt.separator}{ordinal:0{fmt.digit_width}d}"
    block, number = divmod(ordinal - 1, fmt.per_block)
    letters = block_letters(block, fmt.letter_width)
    return f"{prefix}{fmt.separator}{letters}{number + 1:0{fmt.digit_width}d}"


@lru_cache(maxsize=8)
def _padded_numbers(digit_width: int) -> tuple[str, ...]:
    # One string per number of a block, built once: a bulk then only concatenates.
    return tuple(f"{n:0{digit_width}d}" for n in range(1, 10**digit_width))


def _iter_chunks(
    prefix: str, first: int, count: int, fmt: IdFormat, most: int | None = None
) -> Iterator[list[str]]:
    """Yield the IDs ``first .. first+count-1`` one letter block at a time, or in lists of at
    most ``most`` IDs (never across a letter block)."""
    end = first + count
    if fmt.letter_width == 0:
        head, width = prefix + fmt.separator, fmt.digit_width
        step = min(10_000, most or 10_000)
        for start in range(first, end, step):
            yield [f"{head}{n:0{width}d}" for n in range(start, min(start + step, end))]
        return
    per_block = fmt.per_block
    numbers: Sequence[str] | None = _padded_numbers(fmt.digit_width) if per_block < 10**6 else None
    n = first
    while n < end:
        block, offset = divmod(n - 1, per_block)
        take = min(per_block - offset, end - n, most or per_block)
        head = prefix + fmt.separator + block_letters(block, fmt.letter_width)
        if numbers is not None:
            yield list(map(head.__add__, numbers[offset : offset + take]))
        else:
            width = fmt.digit_width
            yield [f"{head}{k:0{width}d}" for k in range(offset + 1, offset + take + 1)]
        n += take


def format_ids(prefix: str, first: int, count: int, fmt: IdFormat = DEFAULT_FORMAT) -> list[str]:
    """Return ``count`` consecutive IDs from ordinal ``first``, formatted a block at a time."""
    if first < 1:
        raise InvalidIdError(f"Ordinal must be at least 1, got {first}")
    out: list[str] = []
    for chunk in _iter_chunks(prefix, first, count, fmt):
        out.extend(chunk)
    return out


class IdRange(Sequence[str]):
    """A lazy, immutable run of consecutive IDs: a million of them cost nothing until read."""

    __slots__ = ("first", "format", "prefix", "size")

    def __init__(self, prefix: str, first: int, count: int, fmt: IdFormat = DEFAULT_FORMAT):
        if first < 1 or count < 0:
            raise InvalidIdError(f"Invalid range: first={first}, count={count}")
        self.prefix, self.first, self.size, self.format = prefix, first, count, fmt

    @property
    def last(self) -> int:
        """Return the ordinal of the last ID in the range."""
        return self.first + self.size - 1

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step == 1:
                return format_ids(
                    self.prefix, self.first + start, max(0, stop - start), self.format
                )
            return [self[i] for i in range(start, stop, step)]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError("IdRange index out of range")
        return format_id(self.prefix, self.first + index, self.format)

    def __iter__(self) -> Iterator[str]:
        for chunk in _iter_chunks(self.prefix, self.first, self.size, self.format):
            yield from chunk

    def chunks(self, most: int | None = None) -> Iterator[list[str]]:
        """Yield the IDs in lists of at most one letter block each (for streaming), and of at
        most ``most`` IDs if given (what a holder of many ranges keeps formatted at once)."""
        if most is not None and most < 1:
            raise ValueError(f"A chunk holds at least one ID, got most={most}")
        return _iter_chunks(self.prefix, self.first, self.size, self.format, most)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdRange):
            return (self.prefix, self.first, self.size, self.format) == (
                other.prefix,
                other.first,
                other.size,
                other.format,
            )
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.prefix, self.first, self.size, self.format))

    def __repr__(self) -> str:
        if not self.size:
            return f"IdRange({self.prefix!r}, empty)"
        return f"IdRange({self[0]!r} .. {self[-1]!r}, count={self.size})"


@dataclass(frozen=True, slots=True)
class ParsedId:
    """An ID read back into its parts."""

    prefix: str
    letters: str
    number: int
    ordinal: int
    normalized: str


def parse_id(
    text: str,
    *,
    lenient: bool = False,
    fmt: IdFormat = DEFAULT_FORMAT,
    prefix: str | None = None,
) -> ParsedId:
    """Read an ID into prefix, letters, number and ordinal.

    Strict by default. ``lenient=True`` applies the format correction where the intent is
    unambiguous: surrounding white space, lower case, missing or extra zero padding, and a
    number ``0000`` read as "just before ``0001``" of its letters.

    Args:
        text: the ID.
        lenient: accept the corrections above.
        fmt: the prefix's format.
        prefix: the expected prefix; required when the separator is empty.

    Raises:
        InvalidIdError: naming the value and why it cannot be read.
    """
    parsed_prefix, ordinal, shown = _read(text, lenient, fmt, prefix)
    if ordinal < 1:
        first = format_id(parsed_prefix, 1, fmt)
        raise InvalidIdError(f"Invalid ID {shown!r}: it comes before the first ID {first}")
    if fmt.letter_width == 0:
        letters_out, number_out = "", ordinal
    else:
        # Re-derive the parts: a lenient "AAB0000" is really "AAA9999".
        block, offset = divmod(ordinal - 1, fmt.per_block)
        letters_out, number_out = block_letters(block, fmt.letter_width), offset + 1
    normalized = format_id(parsed_prefix, ordinal, fmt)
    return ParsedId(parsed_prefix, letters_out, number_out, ordinal, normalized)


def latest_ordinal(text: str, *, fmt: IdFormat, prefix: str) -> int:
    """Return the ordinal of ``text`` read as a *latest* ID of ``prefix`` (leniently): as
    :func:`parse_id`, except that the ID just before the first (``PREFIX-AAA0000``) is 0,
    nothing issued yet.

    Raises:
        InvalidIdError: naming the value and why it cannot be read.
    """
    return _read(text, True, fmt, prefix)[1]  # never below 0: digits and letters count up


def _read(text: str, lenient: bool, fmt: IdFormat, prefix: str | None) -> tuple[str, int, str]:
    """Return the prefix, the ordinal (0 for "just before the first") and the text as shown
    in messages."""
    if not isinstance(text, str):
        raise InvalidIdError(f"ID must be a string, got {type(text).__name__}")
    shown = text if len(text) <= 80 else text[:77] + "..."
    raw = text.strip() if lenient else text
    if not raw.isascii():
        # Upper-casing would turn some non-ASCII letters into ASCII ones ("ﬀ" into "FF").
        raise InvalidIdError(
            f"Invalid ID {shown!r}: only A-Z, 0-9, '_' and the separator are allowed"
        )
    raw = raw.upper() if lenient else raw
    head, body = _split(raw, shown, fmt, prefix)
    try:
        parsed_prefix = normalize_prefix(head) if lenient else head
        if not lenient and normalize_prefix(head) != head:
            raise InvalidPrefixError("Prefix must be upper case without surrounding spaces")
    except InvalidPrefixError as exc:
        raise InvalidIdError(f"Invalid ID {shown!r}: {exc}") from None
    if prefix is not None and parsed_prefix != prefix:
        raise InvalidIdError(f"Invalid ID {shown!r}: it must start with '{prefix}{fmt.separator}'")
    letters, number = _split_body(body, shown, fmt, lenient)
    if fmt.letter_width == 0:
        ordinal = number
    else:
        ordinal = letters_block(letters, fmt.letter_width) * fmt.per_block + number
    if ordinal > MAX_ORDINAL:
        raise InvalidIdError(f"Invalid ID {shown!r}: {_BEYOND_END}")
    return parsed_prefix, ordinal, shown


def _split(raw: str, shown: str, fmt: IdFormat, prefix: str | None) -> tuple[str, str]:
    """Split an ID into its prefix and the letters-and-digits after the separator."""
    if fmt.separator:
        head, sep, body = raw.rpartition(fmt.separator)
        if not sep:
            raise InvalidIdError(f"Invalid ID {shown!r}: missing the separator {fmt.separator!r}")
        return head, body
    if prefix is None:
        raise InvalidIdError(
            f"Invalid ID {shown!r}: the prefix must be given when the format has no separator"
        )
    if not raw.startswith(prefix):
        raise InvalidIdError(f"Invalid ID {shown!r}: it must start with '{prefix}'")
    return prefix, raw[len(prefix) :]


_BODY_RE = re.compile(r"([A-Z]*)([0-9]+)")
_BEYOND_END = f"it lies beyond the last ID a sequence can reach (ordinal {MAX_ORDINAL:,})"
# No ID within MAX_ORDINAL has more letters or significant digits than this; checking the
# length first keeps absurd input from costing big-integer arithmetic (or int()'s digit limit).
_MAX_PART_LENGTH = 20


def _split_body(body: str, shown: str, fmt: IdFormat, lenient: bool) -> tuple[str, int]:
    """Return the letters and the number of the part after the separator."""
    match = _BODY_RE.fullmatch(body) if body.isascii() else None
    if match is None:
        raise InvalidIdError(
            f"Invalid ID {shown!r}: expected letters A-Z then digits after the prefix"
        )
    letters, digits = match.groups()
    if len(letters) > _MAX_PART_LENGTH or len(digits.lstrip("0")) > _MAX_PART_LENGTH:
        raise InvalidIdError(f"Invalid ID {shown!r}: {_BEYOND_END}")
    if fmt.letter_width == 0 and letters:
        raise InvalidIdError(f"Invalid ID {shown!r}: this format has digits only")
    if fmt.letter_width and len(letters) < fmt.letter_width:
        raise InvalidIdError(
            f"Invalid ID {shown!r}: expected at least {fmt.letter_width} letters, "
            f"got {len(letters)}"
        )
    number = int(digits.lstrip("0") or "0")
    if fmt.letter_width and number > fmt.per_block:
        raise InvalidIdError(f"Invalid ID {shown!r}: number {number} exceeds {fmt.per_block}")
    if not lenient:
        expected = f"{number:0{fmt.digit_width}d}"
        if digits != expected or (fmt.letter_width and number == 0):
            raise InvalidIdError(
                f"Invalid ID {shown!r}: expected {fmt.digit_width} digits from "
                f"{1:0{fmt.digit_width}d} to {fmt.per_block}"
                if fmt.letter_width
                else f"Invalid ID {shown!r}: expected at least {fmt.digit_width} digits"
            )
    return letters, number


def collision(first: str, first_fmt: IdFormat, second: str, second_fmt: IdFormat) -> str | None:
    """Return an ID that both sequences would write, or None when no string is an ID of both.

    Only sequences without a separator can collide: a separator is never a prefix or body
    character, so it marks where the prefix ends. Without one, ``COL`` with three letters and
    ``COLA`` with two both write ``COLAAA0001``; ``D`` with five digits and ``D0`` with four
    both write ``D00001``. The witness is checked by reading it strictly as an ID of both.
    """
    if first_fmt.separator or second_fmt.separator or first == second:
        return None
    (a, fa), (b, fb) = sorted([(first, first_fmt), (second, second_fmt)], key=lambda s: len(s[0]))
    if not b.startswith(a):
        return None
    witness = _witness(a, fa, b[len(a) :], fb)
    if witness is None:
        return None
    try:
        parse_id(witness, fmt=fa, prefix=a)
        parse_id(witness, fmt=fb, prefix=b)
    except InvalidIdError:  # beyond the last ordinal: no such ID is ever issued
        return None
    return witness


def _digits(length: int, minimum: int) -> str:
    """Return a number written in ``length`` digits: zero-padded at the minimum width only."""
    return "0" * (length - 1) + "1" if length == minimum else "1" + "0" * (length - 1)


def _witness(a: str, fa: IdFormat, extra: str, fb: IdFormat) -> str | None:
    """Return ``a + body``, a body of ``fa`` that reads as ``extra + body'`` of ``fb``, or None.

    Bodies are letters then digits: ``extra`` must be letters then digits too.
    """
    match = re.fullmatch(r"([A-Z]*)([0-9]*)", extra)
    if match is None:
        return None
    letters, digits = match.groups()
    if not digits:
        # The second's letters continue the extra ones; the digits must be the same.
        if fa.letter_width == 0:
            return None
        if fb.letter_width:
            if fa.digit_width != fb.digit_width:
                return None
            more = max(fb.letter_width, fa.letter_width - len(letters))
            return a + letters + "A" * more + _digits(fa.digit_width, fa.digit_width)
        # Digits only after the extra letters: they must be exactly the first's digits.
        if len(letters) < fa.letter_width or fa.digit_width < fb.digit_width:
            return None
        return a + letters + _digits(fa.digit_width, fb.digit_width)
    if fb.letter_width:
        return None  # letters would follow the extra digits
    if fa.letter_width:
        rest = fa.digit_width - len(digits)
        if len(letters) < fa.letter_width or rest < fb.digit_width:
            return None
        return a + letters + digits + _digits(rest, fb.digit_width)
    if letters:
        return None
    if digits[0] == "0":
        # Leading zeros only pad a number to exactly the first's width.
        rest = fa.digit_width - len(digits)
        return a + digits + _digits(rest, fb.digit_width) if rest >= fb.digit_width else None
    rest = max(fb.digit_width, fa.digit_width - len(digits))
    return a + digits + _digits(rest, fb.digit_width)
