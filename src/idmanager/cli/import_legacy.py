"""``idmanager import-legacy``: continue the sequences of a seed-era database."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy.exc import ArgumentError

from ..application import legacy
from ..domain.errors import (
    IdManagerError,
)
from ..infrastructure.database import DEFAULT_DATABASE_URL, sync_url
from .base import (
    CONNECT_TIMEOUT_S,
    EXIT_CODES,
    EXIT_INPUT,
    DatabaseUrl,
    Json,
    Scope,
    _engine,
    _print_json,
    _report,
    app,
    fail,
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
    ] = legacy.DEFAULT_TABLE,
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
    options: dict[str, Any] = {}
    if (
        source_url_checked.get_backend_name() in ("postgresql", "mysql")
        and "connect_timeout" not in source_url_checked.query
    ):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    target = _engine(database_url)
    source = None
    try:
        source = legacy.source_engine(source_url_checked, **options)
        report = legacy.import_legacy(
            source,
            target,
            table=table,
            scope=scope,
            on_corrupt=on_corrupt,
            dry_run=dry_run,
        )
    except IdManagerError as exc:
        _report(exc)
    finally:
        target.dispose()
        if source is not None:
            source.dispose()
    restarts = "restarts" if report.written else "would restart"
    for row in report.rows:
        if row.status is legacy.Status.RESET:
            typer.echo(
                f"WARNING: {row.prefix} {restarts} at {row.next_id} because its latest ID "
                f"{row.legacy_latest_id!r} cannot be read: IDs it issued before may be "
                "issued again while they are still in use",
                err=True,
            )
    if as_json:
        _print_json(report.to_dict())
    else:
        for row in report.rows:
            typer.echo(row.line())
        typer.echo(report.summary())
    if report.failed:
        outcome = "a real run would write nothing" if dry_run else "nothing was written"
        fail(
            f"{len(report.refused)} of {len(report.rows)} rows cannot be imported (refused "
            f"above); {outcome}. Correct them in the source, or rerun with --on-corrupt skip "
            "to import the others",
            EXIT_INPUT,
        )
