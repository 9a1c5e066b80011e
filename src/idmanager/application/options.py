"""The service's options: one frozen value, varied with ``dataclasses.replace``."""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.errors import InvalidInputError
from ..domain.format import DEFAULT_FORMAT, IdFormat

# The library allows large bulks: a million IDs cost one statement and ~0.1 s of formatting.
DEFAULT_MAX_COUNT = 10_000_000


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How a service allocates, creates and names its changes.

    ``ServiceOptions(fiscal_year_start=4)``; ``replace(options, actor="ops")`` for a variant.
    """

    max_count: int = DEFAULT_MAX_COUNT
    """Most IDs one call may allocate."""
    create_missing: bool = True
    """Create an unknown prefix on its first allocation (else ``PrefixNotFoundError``)."""
    default_format: IdFormat = DEFAULT_FORMAT
    """The format of sequences created without one."""
    actor: str | None = None
    """Who makes the changes, as the audit trail names them."""
    fiscal_year_start: int = 1
    """The first month of the fiscal year, for ``{FY}`` in period templates."""
    lock_timeout_ms: int | None = None
    """Wait at most this long for a sequence another transaction holds, then raise
    ``BusyError``; 0 does not wait at all; None waits as the database session does."""
    max_sequences: int | None = None
    """Create no sequence past this many in all (``LimitReachedError``); None: no limit."""
    period_window_days: int | None = None
    """A document date for a period template must lie within this many days of today
    (``InvalidInputError``); None: any date."""

    def __post_init__(self) -> None:
        if type(self.max_count) is not int or self.max_count < 1:
            raise InvalidInputError(f"max_count must be a positive integer, got {self.max_count!r}")
        if not 1 <= self.fiscal_year_start <= 12:
            raise InvalidInputError(
                f"fiscal_year_start must be a month from 1 to 12, got {self.fiscal_year_start!r}"
            )
        for name in ("max_sequences", "period_window_days"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise InvalidInputError(f"{name} must be a non-negative integer, got {value!r}")
        if self.lock_timeout_ms is not None and self.lock_timeout_ms < 0:
            raise InvalidInputError(
                f"lock_timeout_ms cannot be negative, got {self.lock_timeout_ms!r}"
            )


DEFAULT_OPTIONS = ServiceOptions()
