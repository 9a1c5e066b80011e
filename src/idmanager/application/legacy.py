"""Import a seed-era ``id_managers`` table: continue every sequence exactly after its latest ID.

The seed stored, per prefix, the latest ID issued as text (``latest_id``). The import reads
every row, plans what each one becomes (a pure step: read as is, corrected, refused or
skipped, and why), then applies the plan in ONE transaction of the target: each sequence is
created or moved forward to its legacy latest ID, never backwards, keeping ``is_active``.
A dry run, and a ``fail`` run that met a row it cannot read, roll that transaction back, so
they report exactly what a real run would do and write nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from ..domain.entity import HEALTH_CHECK_PREFIX
from ..domain.errors import (
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    ResetRefusedError,
)
from ..domain.format import DEFAULT_FORMAT, format_id, latest_ordinal, normalize_prefix
from .service import SyncIdManagerService, check_scope
from .use_cases import SyncIdManagerUseCases

DEFAULT_TABLE = "id_managers"


class OnCorrupt(StrEnum):
    """What to do with a row whose latest ID cannot be read."""

    FAIL = "fail"  # write nothing at all
    SKIP = "skip"  # import the other rows
    RESET = "reset"  # the seed's behaviour: restart it at AAA0001 (may re-issue IDs)


class Status(StrEnum):
    """What the import did with one legacy row."""

    IMPORTED = "imported"
    CORRECTED = "corrected"  # imported after correcting its format (case, spaces, padding)
    RESET = "reset"  # unreadable, restarted at AAA0001 (--on-corrupt reset)
    UNCHANGED = "unchanged"  # the target is already at or past the legacy latest ID
    REFUSED = "refused"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class LegacyRow:
    """One row of the seed's table, as stored."""

    prefix: str | None
    latest_id: str | None
    is_active: bool = True


@dataclass(frozen=True, slots=True)
class PlannedRow:
    """What a legacy row becomes, decided from the row alone."""

    row: LegacyRow
    status: Status  # IMPORTED, CORRECTED, RESET, REFUSED or SKIPPED
    prefix: str | None = None  # normalized; None when the prefix cannot be read
    ordinal: int | None = None  # of the legacy latest ID; 0 when nothing was issued
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RowReport:
    """What the import did (or, in a dry run, would do) with one legacy row."""

    status: Status
    prefix: str | None  # normalized; None when the stored prefix cannot be read
    legacy_prefix: str | None  # as stored
    legacy_latest_id: str | None  # as stored
    latest_id: str | None  # what it reads as; None when nothing was issued or unreadable
    next_id: str | None  # the target's next ID after the import; None when not imported
    is_active: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """Every row's outcome, and whether the target was written."""

    rows: list[RowReport]
    table: str
    scope: str
    on_corrupt: OnCorrupt
    dry_run: bool
    written: bool

    @property
    def refused(self) -> list[RowReport]:
        """Return the rows that could not be imported."""
        return [row for row in self.rows if row.status is Status.REFUSED]

    @property
    def failed(self) -> bool:
        """Return True when ``fail`` mode met a row it cannot import (nothing was written)."""
        return self.on_corrupt is OnCorrupt.FAIL and bool(self.refused)

    def counts(self) -> dict[str, int]:
        """Return how many rows ended in each status."""
        found = Counter(row.status for row in self.rows)
        return {status.value: found[status] for status in Status}

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "table": self.table,
            "scope": self.scope,
            "on_corrupt": self.on_corrupt.value,
            "dry_run": self.dry_run,
            "written": self.written,
            "counts": self.counts(),
            "rows": [asdict(row) for row in self.rows],
        }


def read_latest(text: str, prefix: str) -> int:
    """Return the ordinal of a legacy latest ID of ``prefix``; 0 means nothing was issued.

    Applies the format correction (white space, case, zero padding and digit
    widths other than 4, ``0000``). Blank text and ``PREFIX-AAA0000``, the ID just before
    the first, mean that nothing was issued.

    Raises:
        InvalidIdError: naming the value and why it cannot be read.
    """
    if not text.strip():
        return 0
    return latest_ordinal(text, fmt=DEFAULT_FORMAT, prefix=prefix)


def plan_row(row: LegacyRow, on_corrupt: OnCorrupt = OnCorrupt.FAIL) -> PlannedRow:
    """Decide what ``row`` becomes, from the row alone."""
    try:
        prefix = normalize_prefix(row.prefix if row.prefix is not None else "")
    except InvalidPrefixError as exc:
        return PlannedRow(row, Status.REFUSED, reason=str(exc))
    if prefix == HEALTH_CHECK_PREFIX:
        reason = "reserved for the health check; a leftover of the seed's, not imported"
        return PlannedRow(row, Status.SKIPPED, prefix, reason=reason)
    if row.latest_id is None:
        # The seed's own "nothing issued yet".
        ordinal, exact = 0, True
    else:
        try:
            ordinal = read_latest(row.latest_id, prefix)
        except InvalidIdError as exc:
            if on_corrupt is OnCorrupt.RESET:
                return PlannedRow(row, Status.RESET, prefix, 0, str(exc))
            return PlannedRow(row, Status.REFUSED, prefix, reason=str(exc))
        exact = ordinal > 0 and row.latest_id == format_id(prefix, ordinal)
    status = Status.IMPORTED if exact and row.prefix == prefix else Status.CORRECTED
    return PlannedRow(row, status, prefix, ordinal)


def plan_import(
    rows: Iterable[LegacyRow], on_corrupt: OnCorrupt = OnCorrupt.FAIL
) -> list[PlannedRow]:
    """Decide what every legacy row becomes."""
    return [plan_row(row, on_corrupt) for row in rows]


def _report(planned: PlannedRow, status: Status, **changes: Any) -> RowReport:
    row, prefix, ordinal = planned.row, planned.prefix, planned.ordinal
    latest = format_id(prefix, ordinal) if prefix and ordinal else None
    values: dict[str, Any] = {"next_id": None, "reason": planned.reason} | changes
    return RowReport(
        status, prefix, row.prefix, row.latest_id, latest, is_active=row.is_active, **values
    )


def apply_row(service: SyncIdManagerService, planned: PlannedRow, *, scope: str = "") -> RowReport:
    """Create or move the target sequence of ``planned`` forward, never backwards."""
    if planned.status in (Status.REFUSED, Status.SKIPPED):
        return _report(planned, planned.status)
    prefix, ordinal = planned.prefix, planned.ordinal
    assert prefix is not None and ordinal is not None, "an importable row has both"
    current = service.repository.get(scope, prefix, for_update=True)
    if current is not None and current.format != DEFAULT_FORMAT:
        return _report(
            planned,
            Status.REFUSED,
            reason=f"the target's {prefix} has another format ({current.format}); the "
            "seed's IDs have the default one",
        )
    if current is None or current.last_value < ordinal:
        try:
            stored = planned.row.latest_id
            manager = service.import_sequence(
                prefix,
                ordinal,
                scope=scope,
                is_active=planned.row.is_active,
                detail=f"legacy latest ID {stored!r}" if stored is not None else "legacy: none",
                fmt=DEFAULT_FORMAT,  # the seed's IDs, whatever format new sequences get here
            )
        except ResetRefusedError:
            # Created and moved on by an allocation since the read above: it is further.
            current = service.repository.get(scope, prefix, for_update=True)
            assert current is not None, "the refusal comes from an existing sequence"
        else:
            return _report(planned, planned.status, next_id=manager.next_id)
    return _report(
        planned,
        Status.UNCHANGED,
        next_id=current.next_id,
        reason=f"the target is already at {current.latest_id}"
        if current.latest_id
        else "the target exists and has issued nothing",
    )


def apply_plan(
    service: SyncIdManagerService, plan: Sequence[PlannedRow], *, scope: str = ""
) -> list[RowReport]:
    """Apply every planned row in the service's transaction, in order."""
    return [apply_row(service, planned, scope=scope) for planned in plan]


class _Discard(Exception):
    """Raised out of the target's transaction to roll it back, carrying the report."""

    def __init__(self, rows: list[RowReport]) -> None:
        super().__init__("import rolled back")
        self.rows = rows


def import_legacy(
    rows: Iterable[LegacyRow],
    target: SyncIdManagerUseCases,
    *,
    table: str = DEFAULT_TABLE,
    scope: str = "",
    on_corrupt: OnCorrupt | str = OnCorrupt.FAIL,
    dry_run: bool = False,
) -> ImportReport:
    """Continue every sequence of the seed's ``rows`` (read from ``table``) in the target.

    The target is written in one transaction, committed only if nothing is refused or
    ``on_corrupt`` is not ``fail``, and never for a dry run. Changes are audited under the
    target's actor.

    Raises:
        InvalidInputError: a bad option.
        StorageError: the target cannot be reached, or is not migrated.
    """
    try:
        mode = OnCorrupt(on_corrupt)
    except ValueError:
        choices = ", ".join(m.value for m in OnCorrupt)
        raise InvalidInputError(
            f"on_corrupt must be one of {choices}, got {on_corrupt!r}"
        ) from None
    scope = check_scope(scope)
    plan = plan_import(rows, mode)

    def apply(service: SyncIdManagerService) -> list[RowReport]:
        rows = apply_plan(service, plan, scope=scope)
        if dry_run or (mode is OnCorrupt.FAIL and any(r.status is Status.REFUSED for r in rows)):
            raise _Discard(rows)
        return rows

    try:
        reports, written = target.run(apply), True
    except _Discard as discarded:
        reports, written = discarded.rows, False
    return ImportReport(reports, table, scope, mode, dry_run, written)
