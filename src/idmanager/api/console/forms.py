"""The fields of the console's forms, read from a query or a posted form, in plain words.

A field that cannot be read is an ``InvalidInputError`` naming the field as the page labels it,
so that the form can show it beside the values the operator typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ...domain.errors import InvalidInputError
from ...domain.format import DEFAULT_FORMAT, IdFormat


def text(values: Mapping[str, Any], name: str, default: str = "") -> str:
    """Return a text field (a file upload or a missing field counts as ``default``)."""
    value = values.get(name)
    return value if isinstance(value, str) else default


def whole_number(values: Mapping[str, Any], name: str, label: str, default: int) -> int:
    """Return a whole-number field.

    Raises:
        InvalidInputError: it is not a whole number.
    """
    raw = text(values, name).strip()
    if not raw:
        return default
    if not raw.isdigit() or len(raw) > 6:
        raise InvalidInputError(f"{label}: {raw!r} is not a whole number")
    return int(raw)


def document_date(values: Mapping[str, Any]) -> date:
    """Return the document date of a form (default today, UTC).

    Raises:
        InvalidInputError: not a date written YYYY-MM-DD.
    """
    raw = text(values, "date").strip()
    if not raw:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInputError(f"Document date: {raw!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True, slots=True)
class FormatFields:
    """The register/configure form as typed: strings, so it can be shown back as it was."""

    prefix: str
    scope: str
    separator: str
    letters: str
    digits: str
    day: str  # the document date as typed (the form's 'date' field)

    @classmethod
    def read(cls, values: Mapping[str, Any], *, today: date) -> FormatFields:
        """Return the fields of a query or a posted form, with the defaults for missing ones."""
        return cls(
            prefix=text(values, "prefix").strip(),
            scope=text(values, "scope").strip(),
            separator=text(values, "separator", DEFAULT_FORMAT.separator),
            letters=text(values, "letters", str(DEFAULT_FORMAT.letter_width)),
            digits=text(values, "digits", str(DEFAULT_FORMAT.digit_width)),
            day=text(values, "date", today.isoformat()),
        )

    @classmethod
    def of(cls, prefix: str, scope: str, fmt: IdFormat, today: date) -> FormatFields:
        """Return the fields showing an existing sequence's format."""
        return cls(
            prefix,
            scope,
            fmt.separator,
            str(fmt.letter_width),
            str(fmt.digit_width),
            today.isoformat(),
        )

    @property
    def is_template(self) -> bool:
        """Return True when the prefix holds date tokens (``INV{YYYY}``)."""
        return "{" in self.prefix or "}" in self.prefix

    def format(self) -> IdFormat:
        """Return the format the fields describe.

        Raises:
            InvalidInputError: a field that is not a number, or a format that cannot be.
        """
        values = {"letters": self.letters, "digits": self.digits}
        return IdFormat(
            separator=self.separator,
            letter_width=whole_number(values, "letters", "Letters", DEFAULT_FORMAT.letter_width),
            digit_width=whole_number(values, "digits", "Digits", DEFAULT_FORMAT.digit_width),
        )

    def on(self) -> date:
        """Return the document date (today when empty)."""
        return document_date({"date": self.day})
