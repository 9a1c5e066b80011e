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
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..domain.entity import HEALTH_CHECK_PREFIX
from ..domain.errors import (
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    ResetRefusedError,
    StorageError,
)
from ..domain.format import DEFAULT_FORMAT, format_id, normalize_prefix, parse_id
from ..infrastructure.database import create_engine, sync_url
from .service import SyncIdManagerService, check_scope
from .use_cases import SyncIdManagerUseCases

DEFAULT_TABLE = "id_managers"
DEFAULT_ACTOR = "import-legacy"


class OnCorrupt(StrEnum):
    """What to do with a row whose latest ID cannot be read."""

    FAIL = "fail"  # write nothing at all
    SKIP = "skip"  # import the other rows
    RESET = "reset"  # the seed's behaviour: restart it at AAA0001 (may re-issue IDs)


class Status(StrEnum):
    """What the import did with one legacy row."""

    IMPORTED = "imported"
    CORRECTED = "corrected"  # imported, after the format correction of SPEC §1
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

    def line(self) -> str:
        """Describe the row in one line."""
        name = self.prefix or repr(self.legacy_prefix)
        stored = repr(self.legacy_latest_id) if self.legacy_latest_id is not None else "NULL"
        read_as = self.latest_id or "nothing issued"
        notes = []
        if self.prefix and self.legacy_prefix != self.prefix:
            notes.append(f"prefix {self.legacy_prefix!r}")
        if not self.is_active:
            notes.append("inactive")
        tail = f" ({', '.join(notes)})" if notes else ""
        if self.status is Status.IMPORTED:
            if self.latest_id is None:
                return f"imported {name}: nothing issued -> next {self.next_id}{tail}"
            return f"imported {name} -> next {self.next_id}{tail}"
        if self.status is Status.CORRECTED:
            return f"corrected {name}: {stored} -> {read_as}, next {self.next_id}{tail}"
        if self.status is Status.RESET:
            return (
                f"reset {name}: {stored} cannot be read ({self.reason}); "
                f"restarted, next {self.next_id}{tail}"
            )
        if self.status is Status.UNCHANGED:
            return f"unchanged {name}: {self.reason} (legacy {read_as}), next {self.next_id}"
        if self.status is Status.REFUSED:
            return f"refused {name}: {stored} — {self.reason}"
        return f"skipped {name}: {self.reason}"


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

    def summary(self) -> str:
        """Describe the whole import in one line."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts().items())
        if self.written:
            outcome = "written"
        elif self.dry_run:
            outcome = "dry run, nothing written"
        else:
            outcome = "nothing written"
        return f"{len(self.rows)} rows in {self.table}: {counts}; {outcome}"

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

    Applies the format correction of SPEC §1 (white space, case, zero padding and digit
    widths other than 4, ``0000``). Blank text and ``PREFIX-AAA0000``, the ID just before
    the first, mean that nothing was issued.

    Raises:
        InvalidIdError: naming the value and why it cannot be read.
    """
    stripped = text.strip()
    if not stripped:
        return 0
    try:
        return parse_id(text, lenient=True, fmt=DEFAULT_FORMAT, prefix=prefix).ordinal
    except InvalidIdError:
        # parse_id refuses ordinal 0; "…AAA0000" is the seed's "just before AAA0001".
        if stripped.endswith("0"):
            try:
                after = parse_id(stripped[:-1] + "1", lenient=True, prefix=prefix).ordinal
            except InvalidIdError:
                after = None
            if after == 1:
                return 0
        raise


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
            manager = service.configure_prefix(
                prefix,
                scope=scope,
                fmt=DEFAULT_FORMAT,
                is_active=planned.row.is_active,
                latest_id=format_id(prefix, ordinal) if ordinal else None,
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


def source_engine(url: str | URL, **options: Any) -> Engine:
    """Create an engine that reads the seed's database (a SQLite file is opened read-only).

    Raises:
        InvalidInputError: a SQLite database that is not an existing file.
    """
    parsed = sync_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, **options)
    # Read-only, and without IdManager's SQLite settings: those would write to the seed's
    # file (WAL mode, BEGIN IMMEDIATE), and connecting would create a misspelt one.
    path = parsed.database
    if not path or path == ":memory:" or path.startswith("file:"):
        raise InvalidInputError("The seed's SQLite database must be given as a file path")
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"The seed's SQLite database {path} does not exist")
    read_only = parsed.set(
        database=file.resolve().as_uri(), query={**parsed.query, "mode": "ro", "uri": "true"}
    )
    return sa.create_engine(read_only, **options)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _flag(value: object) -> bool:
    if value is None:
        return True  # the seed's default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return bool(value)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def read_legacy_rows(engine: Engine, table: str = DEFAULT_TABLE) -> list[LegacyRow]:
    """Read the seed's table (``prefix``, ``latest_id``, ``is_active``), sorted by prefix.

    ``table`` may be qualified by a schema (``legacy.id_managers``).

    Raises:
        InvalidInputError: the table or its columns cannot be read.
        StorageError: the source database cannot be reached.
    """
    schema, _, name = table.strip().rpartition(".")
    if not name:
        raise InvalidInputError("The seed's table name cannot be empty")
    source = sa.table(
        name, sa.column("prefix"), sa.column("latest_id"), sa.column("is_active"), schema=schema
    )
    where = engine.url.render_as_string(hide_password=True)
    try:
        connection = engine.connect()
    except SQLAlchemyError as exc:
        raise StorageError(f"Source database unavailable ({where}): {_first_line(exc)}") from exc
    with connection:
        try:
            result = connection.execute(
                sa.select(source.c.prefix, source.c.latest_id, source.c.is_active)
            ).all()
        except DBAPIError as exc:
            line = _first_line(exc)
            if exc.connection_invalidated:
                raise StorageError(f"Source database unavailable ({where}): {line}") from exc
            hint = (
                "; is it IdManager's own table rather than the seed's?"
                if "latest_id" in line
                else ""
            )
            raise InvalidInputError(
                f"Cannot read the seed's table {table!r} in {where}: {line}{hint}"
            ) from exc
    rows = [LegacyRow(_text(p), _text(latest), _flag(active)) for p, latest, active in result]
    # Sorted here, not by the database: the same report whatever the source's collation.
    return sorted(rows, key=lambda row: (row.prefix is None, row.prefix or ""))


class _Discard(Exception):
    """Raised out of the target's transaction to roll it back, carrying the report."""

    def __init__(self, rows: list[RowReport]) -> None:
        super().__init__("import rolled back")
        self.rows = rows


def import_legacy(
    source: Engine,
    target: Engine | sessionmaker[Session],
    *,
    table: str = DEFAULT_TABLE,
    scope: str = "",
    on_corrupt: OnCorrupt | str = OnCorrupt.FAIL,
    dry_run: bool = False,
    actor: str | None = DEFAULT_ACTOR,
) -> ImportReport:
    """Continue every sequence of the seed's ``table`` in ``source`` in the ``target``.

    The target is written in one transaction, committed only if nothing is refused or
    ``on_corrupt`` is not ``fail``, and never for a dry run. Changes are audited.

    Raises:
        InvalidInputError: a bad option, or a source table that cannot be read.
        StorageError: a database cannot be reached, or the target is not migrated.
    """
    try:
        mode = OnCorrupt(on_corrupt)
    except ValueError:
        choices = ", ".join(m.value for m in OnCorrupt)
        raise InvalidInputError(
            f"on_corrupt must be one of {choices}, got {on_corrupt!r}"
        ) from None
    scope = check_scope(scope)
    plan = plan_import(read_legacy_rows(source, table), mode)

    def apply(service: SyncIdManagerService) -> list[RowReport]:
        rows = apply_plan(service, plan, scope=scope)
        if dry_run or (mode is OnCorrupt.FAIL and any(r.status is Status.REFUSED for r in rows)):
            raise _Discard(rows)
        return rows

    try:
        rows, written = SyncIdManagerUseCases(target, actor=actor).run(apply), True
    except _Discard as discarded:
        rows, written = discarded.rows, False
    return ImportReport(rows, table, scope, mode, dry_run, written)
