"""The ``IdManager`` entity: one sequence's state and the rules that read and move it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidCountError, InvalidIdError, ResetRefusedError
from .format import (
    DEFAULT_FORMAT,
    MAX_PREFIX_LENGTH,
    IdFormat,
    IdRange,
    format_id,
    latest_ordinal,
    normalize_prefix,
)

HEALTH_CHECK_PREFIX = "_HEALTH_CHECK_"

# Statistics warn when a prefix has used this much of its current letter width.
WIDTH_WARNING_RATIO = 0.9
_VALID_PREFIX = re.compile(rf"[A-Z0-9_]{{1,{MAX_PREFIX_LENGTH}}}")


@dataclass(slots=True)
class IdManager:
    """A sequence of IDs for one ``(scope, prefix)``.

    ``last_value`` is the ordinal of the last ID issued (0 = none yet): the single source of
    truth. The latest and next IDs are derived from it.
    """

    prefix: str
    scope: str = ""
    last_value: int = 0
    is_active: bool = True
    format: IdFormat = DEFAULT_FORMAT
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    created_by: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        # Rows read back are valid already: one regex, and only a bad prefix pays for more.
        if not (isinstance(self.prefix, str) and _VALID_PREFIX.fullmatch(self.prefix)):
            self.prefix = normalize_prefix(self.prefix)

    def __str__(self) -> str:
        where = f" (scope {self.scope})" if self.scope else ""
        return f"{self.prefix}{where}: {self.latest_id or 'no ID issued yet'}"

    @property
    def latest_id(self) -> str | None:
        """Return the last ID issued, or None when the sequence has issued nothing."""
        return format_id(self.prefix, self.last_value, self.format) if self.last_value else None

    @property
    def next_id(self) -> str:
        """Return the ID the next allocation will issue."""
        return format_id(self.prefix, self.last_value + 1, self.format)

    def issued(self, count: int) -> IdRange:
        """Return the ``count`` IDs that the allocation which ended at ``last_value`` issued."""
        return IdRange(self.prefix, self.last_value - count + 1, count, self.format)

    def parse(self, text: str) -> int:
        """Return the ordinal of ``text``, a latest ID of this prefix (format corrections
        allowed; ``PREFIX-AAA0000``, just before the first, is 0: nothing issued)."""
        try:
            return latest_ordinal(text, fmt=self.format, prefix=self.prefix)
        except InvalidIdError as exc:
            if isinstance(text, str) and not text.strip().upper().startswith(
                self.prefix + self.format.separator
            ):
                raise InvalidIdError(
                    f"Reset ID must start with '{self.prefix}{self.format.separator}'"
                ) from exc
            raise

    def reset_target(self, reset_to: str | None, *, force: bool) -> int:
        """Return the ``last_value`` a reset to ``reset_to`` sets, refusing to go backwards.

        ``reset_to`` is the new *latest* ID: the next ID is its successor. None restarts
        the sequence so that the next ID is the first.
        """
        target = 0 if reset_to is None else self.parse(reset_to)
        if target < self.last_value and not force:
            shown = format_id(self.prefix, target, self.format) if target else "the start"
            raise ResetRefusedError(
                f"Resetting {self.prefix} to {shown} would move it backwards from "
                f"{self.latest_id} and issue IDs again; pass force=True to do it anyway"
            )
        return target

    def width_warning(self) -> str | None:
        """Return a warning when the current letter width is nearly used up, else None."""
        usage = self.width_usage()
        if usage < WIDTH_WARNING_RATIO:
            return None
        return f"{self.prefix} has used {usage:.0%} of its current letter width"

    def width_usage(self) -> float:
        """Return the share of the current letter width's IDs already issued (0.0–1.0)."""
        fmt = self.format
        if fmt.letter_width == 0:
            width = max(fmt.digit_width, len(str(max(self.last_value, 1))))
            return float(self.last_value / (10**width - 1))
        width, start = fmt.letter_width, 0
        blocks = max(self.last_value - 1, 0) // fmt.per_block
        while blocks - start >= 26**width:
            start += 26**width
            width += 1
        capacity = 26**width * fmt.per_block
        return float((self.last_value - start * fmt.per_block) / capacity)


def check_count(count: int, maximum: int) -> int:
    """Validate a requested number of IDs."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidCountError(f"Count must be an integer, got {count!r}")
    if count < 1:
        raise InvalidCountError("Count must be greater than 0")
    if count > maximum:
        raise InvalidCountError(f"Count must not exceed {maximum:,} per call, got {count:,}")
    return count
