"""``idmanager import-legacy``: continue the sequences of a seed-era database."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy.exc import ArgumentError

from ..application import legacy
from ..domain.errors import IdManagerError
from ..infrastructure import legacy_source
from ..infrastructure.database import DEFAULT_DATABASE_URL, sync_url
from ..problems import EXIT_INPUT
from .base import (
    CONNECT_TIMEOUT_S,
    EXIT_CODES,
    Actor,
    DatabaseUrl,
    Json,
    Scope,
    app,
    backend,
    default_actor,
    fail,
    options,
    output,
    print_json,
    report,
)


@app.command("import-legacy", epilog=EXIT_CODES)
def import_legacy(
    source_url: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="URL",
            help="Database URL of the seed's IdManager (PostgreSQL, SQLite or MySQL/MariaDB); "
            "only read. A SQLite file is opened read-only.",
            show_default=False,
        ),
    ],
    table: Annotated[
        str,
        typer.Option(
            "--table",
            metavar="TABLE",
            help="The seed's table in --from (columns prefix, latest_id, is_active); "
            "may be qualified by a schema, e.g. legacy.id_managers.",
        ),
    ] = legacy_source.DEFAULT_TABLE,
    on_corrupt: Annotated[
        legacy.OnCorrupt,
        typer.Option(
            "--on-corrupt",
            help="A row whose latest ID cannot be read: fail writes nothing at all; skip "
            "imports the other rows; reset restarts it at PREFIX-AAA0001, as the seed did, "
            "which may issue IDs that are already in use.",
        ),
    ] = legacy.OnCorrupt.FAIL,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what the import would do and write nothing."),
    ] = False,
    scope: Scope = "",
    actor: Actor = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Continue the sequences of the seed's id_managers table in this database.

    Each prefix continues exactly after its legacy latest ID, read with the format
    correction (case, spaces, zero padding, digit widths, 0000); a sequence is never moved
    backwards, and is_active is kept. One transaction, audited; prints one line per row
    (imported, corrected, reset, unchanged, refused, skipped) and a summary on stdout. With
    --json: {"table", "scope", "on_corrupt", "dry_run", "written", "counts", "rows"}. When a
    row cannot be read and --on-corrupt is fail, the report is printed, nothing is written
    and the exit code is 2.
    """
    try:
        source_url_checked = sync_url(source_url)
    except (ValueError, ArgumentError) as exc:
        fail(f"invalid --from database URL: {exc}", EXIT_INPUT)
    connect: dict[str, Any] = {}
    if (
        source_url_checked.get_backend_name() in ("postgresql", "mysql")
        and "connect_timeout" not in source_url_checked.query
    ):
        connect["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    source = None
    try:
        source = legacy_source.source_engine(source_url_checked, **connect)
        rows = [
            legacy.LegacyRow(*values) for values in legacy_source.read_legacy_rows(source, table)
        ]
        with backend().use_cases(database_url, options(actor or default_actor())) as target:
            outcome = legacy.import_legacy(
                rows, target, table=table, scope=scope, on_corrupt=on_corrupt, dry_run=dry_run
            )
    except IdManagerError as exc:
        report(exc)
    finally:
        if source is not None:
            source.dispose()
    restarts = "restarts" if outcome.written else "would restart"
    for row in outcome.rows:
        if row.status is legacy.Status.RESET:
            typer.echo(
                f"WARNING: {row.prefix} {restarts} at {row.next_id} because its latest ID "
                f"{row.legacy_latest_id!r} cannot be read: IDs it issued before may be "
                "issued again while they are still in use",
                err=True,
            )
    done = "the import was written" if outcome.written else ""
    if as_json:
        print_json(outcome.to_dict(), done)
    else:
        with output(done):
            for row in outcome.rows:
                typer.echo(row_line(row))
            typer.echo(summary_line(outcome))
    if outcome.failed:
        result = "a real run would write nothing" if dry_run else "nothing was written"
        fail(
            f"{len(outcome.refused)} of {len(outcome.rows)} rows cannot be imported (refused "
            f"above); {result}. Correct them in the source, or rerun with --on-corrupt skip "
            "to import the others",
            EXIT_INPUT,
        )


def row_line(row: legacy.RowReport) -> str:
    """Describe one row of the import in one line."""
    name = row.prefix or repr(row.legacy_prefix)
    stored = repr(row.legacy_latest_id) if row.legacy_latest_id is not None else "NULL"
    read_as = row.latest_id or "nothing issued"
    notes = []
    if row.prefix and row.legacy_prefix != row.prefix:
        notes.append(f"prefix {row.legacy_prefix!r}")
    if not row.is_active:
        notes.append("inactive")
    tail = f" ({', '.join(notes)})" if notes else ""
    if row.status is legacy.Status.IMPORTED:
        if row.latest_id is None:
            return f"imported {name}: nothing issued -> next {row.next_id}{tail}"
        return f"imported {name} -> next {row.next_id}{tail}"
    if row.status is legacy.Status.CORRECTED:
        return f"corrected {name}: {stored} -> {read_as}, next {row.next_id}{tail}"
    if row.status is legacy.Status.RESET:
        return (
            f"reset {name}: {stored} cannot be read ({row.reason}); "
            f"restarted, next {row.next_id}{tail}"
        )
    if row.status is legacy.Status.UNCHANGED:
        return f"unchanged {name}: {row.reason} (legacy {read_as}), next {row.next_id}"
    if row.status is legacy.Status.REFUSED:
        return f"refused {name}: {stored} — {row.reason}"
    return f"skipped {name}: {row.reason}"


def summary_line(report: legacy.ImportReport) -> str:
    """Describe the whole import in one line."""
    counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
    if report.written:
        outcome = "written"
    elif report.dry_run:
        outcome = "dry run, nothing written"
    else:
        outcome = "nothing written"
    return f"{len(report.rows)} rows in {report.table}: {counts}; {outcome}"
