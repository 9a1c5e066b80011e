"""Period templates: prefixes with date tokens, resolved from the document's date.

``INV{YYYY}`` on 2026-12-31 is the prefix ``INV2026``, on 2027-01-01 ``INV2027``: each period
is its own sequence, so numbering restarts every period with no reset job, and a back-dated
document is numbered in its own period.

Fiscal years are named by the calendar year in which they *end*: with the fiscal year
starting in April, 2026-04-01 … 2027-03-31 is ``{FY}`` = ``2027``. With the default start
(January) ``{FY}`` equals ``{YYYY}``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from .errors import InvalidPrefixError
from .format import normalize_prefix

_TOKEN_RE = re.compile(r"\{([^{}]*)\}")


def is_template(prefix: str) -> bool:
    """Return True when ``prefix`` holds date tokens."""
    return "{" in prefix or "}" in prefix


def fiscal_year(on: date, first_month: int = 1) -> int:
    """Return the fiscal year of ``on``: the calendar year in which that fiscal year ends."""
    return on.year + 1 if first_month > 1 and on.month >= first_month else on.year


def _check_first_month(first_month: int) -> None:
    if not 1 <= first_month <= 12:
        raise InvalidPrefixError(
            f"The fiscal year's first month must be between 1 and 12, got {first_month}"
        )


def resolve_prefix(template: str, on: date | None = None, *, fiscal_year_start: int = 1) -> str:
    """Return the concrete prefix of ``template`` for the date ``on`` (default: today, UTC).

    A prefix without tokens is returned normalized. Tokens: ``{YYYY}``, ``{YY}``, ``{MM}``,
    ``{DD}``, ``{FY}`` (case-insensitive).

    Raises:
        InvalidPrefixError: an unknown or unbalanced token, or a result that breaks the
            prefix rules.
    """
    if not isinstance(template, str):
        raise InvalidPrefixError("Prefix must be a string")
    if not is_template(template):
        return normalize_prefix(template)
    _check_first_month(fiscal_year_start)
    day = on if on is not None else datetime.now(UTC).date()
    if isinstance(day, datetime):
        day = day.astimezone(UTC).date() if day.tzinfo else day.date()
    values = {
        "YYYY": f"{day.year:04d}",
        "YY": f"{day.year % 100:02d}",
        "MM": f"{day.month:02d}",
        "DD": f"{day.day:02d}",
        "FY": f"{fiscal_year(day, fiscal_year_start):04d}",
    }
    shown = template.strip()

    def substitute(match: re.Match[str]) -> str:
        token = match.group(1).strip().upper()
        if token not in values:
            raise InvalidPrefixError(
                f"Unknown date token {{{match.group(1)}}} in prefix template {shown!r}; "
                "use {YYYY}, {YY}, {MM}, {DD} or {FY}"
            )
        return values[token]

    resolved = _TOKEN_RE.sub(substitute, template)
    if "{" in resolved or "}" in resolved:
        raise InvalidPrefixError(f"Unbalanced braces in prefix template {shown!r}")
    try:
        return normalize_prefix(resolved)
    except InvalidPrefixError as exc:
        raise InvalidPrefixError(
            f"Prefix template {shown!r} resolves to {resolved!r}: {exc}"
        ) from None


def normalize_template(template: str) -> str:
    """Return a template in one spelling (trimmed, upper case: ``INV{YYYY}``), validated.

    Raises:
        InvalidPrefixError: as :func:`resolve_prefix`.
    """
    resolve_prefix(template)
    return _TOKEN_RE.sub(lambda m: "{" + m.group(1).strip().upper() + "}", template.strip().upper())
