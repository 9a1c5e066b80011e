"""``idmanager audit``: read the audit trail, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from ..application.results import AuditPage
from ..domain.repository import AuditAction
from ..infrastructure.database import DEFAULT_DATABASE_URL
from .base import EXIT_CODES, DatabaseUrl, Json, app, console, output, print_json, run, when

# Typer takes one Option per parameter: what --since and --until share, as its arguments.
_TIME: dict[str, Any] = {
    "formats": ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
    "metavar": "TIME",
    "show_default": False,
}


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None else None


@app.command(epilog=EXIT_CODES)
def audit(
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="Only this scope ('' for the default).",
            show_default=False,
        ),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            "--prefix", metavar="PREFIX", help="Only this sequence's entries.", show_default=False
        ),
    ] = None,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor", metavar="NAME", help="Only the changes NAME made.", show_default=False
        ),
    ] = None,
    action: Annotated[
        AuditAction | None,
        typer.Option("--action", help="Only this kind of change.", show_default=False),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="From this time on (UTC).", **_TIME)
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="Before this time (UTC).", **_TIME)
    ] = None,
    before: Annotated[
        int | None,
        typer.Option(
            "--before",
            metavar="N",
            help="Entries numbered below N: the next page.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most N entries (1-1000).")
    ] = 50,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Show who changed which sequence, when, and from what to what; newest first.

    Every registration, creation on first use, configuration, reset, (de)activation and
    legacy import is recorded. With --json: {"items": [...], "next_cursor"}; pass
    next_cursor as --before for the next page.
    """
    page = run(
        database_url,
        lambda s: s.list_audit(
            scope=scope,
            prefix=prefix,
            actor=actor,
            action=action,
            since=_utc(since),
            until=_utc(until),
            before=before,
            limit=limit,
        ),
        commit=False,
    )
    if as_json:
        print_json(page)
        return
    with output():
        if not page.items:
            typer.echo("no audit entries match")
            return
        console().print(_table(page))
        if page.next_cursor is not None:
            typer.echo(f"more: --before {page.next_cursor}")


def _table(page: AuditPage) -> Table:
    table = Table(box=None, pad_edge=False)
    for name in ("#", "When (UTC)", "Actor", "Action", "Sequence", "Change"):
        table.add_column(name, overflow="fold", no_wrap=name in ("#", "When (UTC)"))
    for record in page.items:
        sequence = f"{record.scope}/{record.prefix}" if record.scope else record.prefix
        change = ""
        if record.old_value is not None or record.new_value is not None:
            change = f"{record.old_id or '(none)'} -> {record.new_id or '(none)'}"
        if record.detail:
            change = f"{change}; {record.detail}" if change else record.detail
        table.add_row(
            str(record.id),
            when(record.at),
            record.actor or "-",
            record.action.value,
            sequence,
            change,
        )
    return table
