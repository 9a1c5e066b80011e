"""Plain words for the templates: counts, shares, formats and kinds of change.

Operators confuse the latest ID issued with the next ID, and a counter with an ID: every page
says which is which with these helpers rather than with bare numbers.
"""

from __future__ import annotations

from datetime import datetime

from ...application.service import describe_format
from ...domain.format import IdFormat, format_id

SEPARATORS = (
    ("-", "- (hyphen)"),
    (".", ". (dot)"),
    ("/", "/ (slash)"),
    (":", ": (colon)"),
    ("#", "# (hash)"),
    ("", "none"),
)

ACTIONS = {
    "create": "created by its first ID",
    "register": "registered",
    "configure": "configured",
    "reset": "reset",
    "activate": "activated",
    "deactivate": "deactivated",
    "import": "imported from a legacy database",
    "release": "unused IDs handed back",
}


def count(n: int) -> str:
    """Return ``n`` with thousands separators: 10,000."""
    return f"{n:,}"


def ids(n: int) -> str:
    """Return "1 ID", "2 IDs", "10,000 IDs"."""
    return f"{n:,} ID" if n == 1 else f"{n:,} IDs"


def share(value: float) -> str:
    """Return a share as a percentage people read at a glance (never 0% when not 0)."""
    if value <= 0:
        return "0%"
    if value < 0.001:
        return "under 0.1%"
    return f"{value:.1%}" if value < 0.1 else f"{value:.0%}"


def format_text(prefix: str, fmt: IdFormat) -> str:
    """Return a format in words, starting with its first ID."""
    return describe_format(prefix, fmt)


def first_ids(prefix: str, fmt: IdFormat) -> list[tuple[str, str]]:
    """Return (position, ID) examples: the first IDs and where the letters or digits roll."""
    shown = [(f"{n}", format_id(prefix, n, fmt)) for n in (1, 2, 3)]
    last = fmt.per_block
    if fmt.letter_width:
        shown += [(count(last), format_id(prefix, last, fmt))]
        shown += [(count(last + 1), format_id(prefix, last + 1, fmt))]
    else:
        shown += [(count(last), format_id(prefix, last, fmt))]
        shown += [(count(last + 1), format_id(prefix, last + 1, fmt) + " (the digits grow)")]
    return shown


def action(name: str) -> str:
    """Return a kind of change in words."""
    return ACTIONS.get(name, name)


def when(at: datetime | None) -> str:
    """Return a time as people read it, in UTC."""
    if at is None:
        return "unknown"
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def scope(name: str) -> str:
    """Return a scope, naming the default one."""
    return name or "(default)"


def format_short(fmt: IdFormat) -> str:
    """Return a format in a few words, for a table cell."""
    separator = f"'{fmt.separator}'" if fmt.separator else "no separator"
    letters = {0: "no letters", 1: "1 letter"}.get(fmt.letter_width, f"{fmt.letter_width} letters")
    digits = "1 digit" if fmt.digit_width == 1 else f"{fmt.digit_width} digits"
    return f"{separator}, {letters}, {digits}"
