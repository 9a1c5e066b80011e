"""Commands on sequences: next, reset, list, show, activate, deactivate, health, migrate."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..application.results import SequenceStats
from ..domain.entity import IdManager
from ..domain.errors import IdManagerError
from ..domain.format import IdRange
from ..infrastructure.database import DEFAULT_DATABASE_URL
from ..problems import EXIT_ERROR, EXIT_NOT_FOUND
from .base import (
    CLI_OWNER,
    EXIT_CODES,
    PROGRESS_THRESHOLD,
    Actor,
    DatabaseUrl,
    Day,
    Json,
    Prefix,
    Scope,
    app,
    backend,
    command_claim,
    console,
    default_actor,
    fail,
    options,
    output,
    print_json,
    report,
    run,
    silence_stdout,
    when,
    where,
)

# How many sequences `list` shows unless --limit says otherwise.
LIST_LIMIT = 100


@app.command("next", epilog=EXIT_CODES)
def next_ids(
    prefix: Prefix,
    count: Annotated[
        int,
        typer.Option(
            "--count",
            "-n",
            metavar="N",
            help="How many consecutive IDs to allocate: one statement whatever N is. "
            f"A progress bar shows on stderr from {PROGRESS_THRESHOLD:,} IDs when stderr is "
            "a terminal and stdout is not.",
        ),
    ] = 1,
    scope: Scope = "",
    day: Day = None,
    actor: Actor = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Allocate once for KEY: run again with the same KEY (and the same PREFIX, "
            "N, scope and date), the command prints the same IDs and allocates nothing. For "
            "scripts that may be interrupted. Keys are kept --keys-kept seconds.",
            show_default=False,
        ),
    ] = None,
    keys_kept: Annotated[
        int,
        typer.Option(
            "--keys-kept",
            metavar="SECONDS",
            envvar="IDMANAGER_IDEMPOTENCY_TTL_S",
            min=60,
            max=30 * 86_400,
            help="How long the command line keeps its answers to --idempotency-key; older "
            "ones of its own are deleted as it goes (the HTTP service's never are). The "
            "service's setting.",
        ),
    ] = 86_400,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Allocate the next ID of PREFIX (or N consecutive ones) and print them, one per line.

    The IDs are committed before they are printed. With --json: {"prefix", "scope",
    "count", "ids"}. An unknown prefix is created on first use (audited under --actor).
    """
    on = day.date() if day else None
    service_options = options(actor or default_actor())
    try:
        with backend().use_cases(database_url, service_options) as use_cases:
            if idempotency_key is None:
                ids = use_cases.run(lambda s: s.generate_range(prefix, count, scope=scope, on=on))
            else:
                claim = command_claim(idempotency_key, "next", prefix, count, scope, on)
                once = use_cases.allocate_once(prefix, count, claim, scope=scope, on=on)
                ids = once.value
                # Where no server runs, the command line keeps the table small itself: its own
                # answers only, never an HTTP client's.
                kept = timedelta(seconds=keys_kept)
                use_cases.forget_answers(datetime.now(UTC) - kept, owner=CLI_OWNER)
                if once.replayed:
                    typer.echo(
                        f"key {idempotency_key!r} was used before: these are its IDs, "
                        "nothing was allocated now",
                        err=True,
                    )
    except IdManagerError as exc:
        report(exc)
    _write_ids(ids, scope, as_json)


def _write_ids(ids: IdRange, scope: str, as_json: bool) -> None:
    """Stream the IDs to stdout a letter block at a time, never as one huge string."""
    out: TextIO = sys.stdout
    stderr = Console(stderr=True)
    progress = Progress(
        TextColumn("printing IDs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        # The IDs go to our own stdout, untouched: the bar must not capture it.
        redirect_stdout=False,
        redirect_stderr=False,
        disable=len(ids) < PROGRESS_THRESHOLD or not stderr.is_terminal or out.isatty(),
    )
    try:
        with progress:
            task = progress.add_task("ids", total=len(ids))
            if as_json:
                head = {"prefix": ids.prefix, "scope": scope, "count": len(ids)}
                out.write(json.dumps(head)[:-1] + ', "ids": [')
            separator = ""
            for chunk in ids.chunks():
                if as_json:
                    out.write(separator + json.dumps(chunk)[1:-1])
                    separator = ", "
                else:
                    out.write("\n".join(chunk) + "\n")
                progress.advance(task, len(chunk))
            if as_json:
                out.write("]}\n")
            out.flush()
    except OSError as exc:
        # The reader went away (`| head`), or the disk is full: the IDs are committed all
        # the same, so say which; and keep the interpreter's final flush quiet.
        silence_stdout()
        if isinstance(exc, BrokenPipeError):
            what = "output closed"
        else:
            what = f"could not write the output ({exc.strerror or type(exc).__name__})"
        fail(
            f"{what} before every ID was printed; {ids[0]} to {ids[-1]} "
            f"({len(ids):,} IDs) were allocated"
        )


@app.command(epilog=EXIT_CODES)
def reset(
    prefix: Prefix,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="ID",
            help="The new latest ID of PREFIX: the next ID is its successor "
            "(--to CUS-ZZZ9999 makes the next CUS-AAAA0001). Case, white space and zero "
            "padding are corrected. Omit it to start over at PREFIX-AAA0001.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Allow moving the sequence backwards. Dangerous: the IDs after the new "
            "latest one will be issued a second time.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what the reset would do and change nothing."),
    ] = False,
    scope: Scope = "",
    day: Day = None,
    actor: Actor = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Make --to the latest ID of PREFIX, refusing to move backwards without --force.

    Resetting an unknown prefix creates it. Every reset is recorded in the audit trail
    under --actor. With --json: {"prefix", "scope", "previous_id", "latest_id", "next_id",
    "forced", "dry_run"}.
    """
    result = run(
        database_url,
        lambda s: s.reset_sequence(
            prefix, to, force, scope=scope, on=day.date() if day else None, dry_run=dry_run
        ),
        commit=not dry_run,
        actor=actor or default_actor(),
    )
    done = "" if dry_run else f"the reset of {result.prefix}{where(result.scope)} was made"
    if as_json:
        print_json(result, done)
        return
    moved = f"latest ID {result.previous_id or '(none)'} -> {result.latest_id or '(none)'}"
    subject = f"{result.prefix}{where(result.scope)}"
    with output(done):
        if dry_run:
            typer.echo(
                f"dry run, nothing changed: {subject} would go from {moved}, "
                f"next ID {result.next_id}"
            )
        else:
            forced = " (forced)" if result.forced else ""
            typer.echo(f"reset {subject}{forced}: {moved}, next ID {result.next_id}")


@app.command("list", epilog=EXIT_CODES)
def list_prefixes(
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="Only the sequences of this scope ('' for the default scope). "
            "Default: every scope.",
            show_default=False,
        ),
    ] = None,
    active_only: Annotated[
        bool, typer.Option("--active-only", help="Leave out deactivated prefixes.")
    ] = False,
    search: Annotated[
        str | None,
        typer.Option("--search", metavar="TEXT", help="Only prefixes that contain TEXT."),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            metavar="TEMPLATE",
            help="Only the periods of this template, e.g. INV{YYYY}.",
        ),
    ] = None,
    skip: Annotated[
        int, typer.Option("--skip", metavar="N", help="Leave out the first N sequences.")
    ] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most N sequences.")
    ] = LIST_LIMIT,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """List the sequences, ordered by scope and prefix.

    With --json: an array of the statistics objects that `show --json` prints.
    """
    managers = run(
        database_url,
        lambda s: s.get_all_prefixes(
            scope=scope,
            skip=skip,
            limit=limit,
            active_only=active_only,
            search=search,
            template=template,
        ),
        commit=False,
    )
    if as_json:
        print_json([SequenceStats.of(manager) for manager in managers])
        return
    with output():
        if managers:
            console().print(_list_table(managers))
        elif (
            any((scope is not None, active_only, search is not None, template is not None, skip))
            or limit != LIST_LIMIT
        ):
            typer.echo("no prefixes match")
        else:
            typer.echo("no prefixes yet: `idmanager next PREFIX` creates one")


def _list_table(managers: list[IdManager]) -> Table:
    with_scope = any(manager.scope for manager in managers)
    table = Table(box=None, pad_edge=False)
    # A terminal too narrow for the table wraps the names and IDs: never cuts them short.
    if with_scope:
        table.add_column("Scope", overflow="fold", min_width=5)
    table.add_column("Prefix", overflow="fold", min_width=6)
    table.add_column("Latest ID", overflow="fold", min_width=9)
    table.add_column("Next ID", overflow="fold", min_width=9)
    table.add_column("Issued", justify="right", no_wrap=True)
    table.add_column("Active", no_wrap=True)
    table.add_column("Updated (UTC)", no_wrap=True)
    for manager in managers:
        row = [
            manager.prefix,
            manager.latest_id or "-",
            manager.next_id,
            f"{manager.last_value:,}",
            "yes" if manager.is_active else "no",
            when(manager.updated_at),
        ]
        table.add_row(*([manager.scope] if with_scope else []), *row)
    return table


@app.command(epilog=EXIT_CODES)
def show(
    prefix: Prefix,
    scope: Scope = "",
    day: Day = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Show the statistics of PREFIX: latest and next ID, count issued, state and format."""
    on = day.date() if day else None
    stats = run(
        database_url, lambda s: s.get_prefix_stats(prefix, scope=scope, on=on), commit=False
    )
    if not stats.exists:
        fail(
            f"Prefix {stats.prefix}{where(scope)} does not exist; "
            f"its first ID would be {stats.next_id}",
            EXIT_NOT_FOUND,
        )
    if as_json:
        print_json(stats)
        return
    fmt = stats.format
    rows = [
        ("Prefix", stats.prefix),
        ("Scope", stats.scope or "(default)"),
        ("Latest ID", stats.latest_id or "(none issued)"),
        ("Next ID", stats.next_id),
        ("Issued", f"{stats.count_issued:,}"),
        ("Active", "yes" if stats.is_active else "no"),
        (
            "Format",
            f"separator {fmt.separator!r}, {fmt.letter_width} letters, {fmt.digit_width} digits",
        ),
        ("Letter width used", f"{stats.width_usage:.2%}"),
        ("Template", stats.template or "-"),
        ("Created", f"{when(stats.created_at)} by {stats.created_by or 'unknown'}"),
        ("Updated", when(stats.updated_at)),
    ]
    if stats.warning:
        rows.append(("Warning", stats.warning))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    with output():
        console().print(table)


def _set_active(
    prefix: str, scope: str, database_url: str, as_json: bool, active: bool, actor: str | None
) -> None:
    manager = run(
        database_url,
        lambda s: (s.activate_prefix if active else s.deactivate_prefix)(prefix, scope=scope),
        actor=actor or default_actor(),
    )
    done = f"{manager.prefix}{where(scope)} was {'' if active else 'de'}activated"
    if as_json:
        print_json(SequenceStats.of(manager), done)
        return
    with output(done):
        if active:
            typer.echo(f"{manager.prefix}{where(scope)} is active: next ID {manager.next_id}")
        else:
            typer.echo(
                f"{manager.prefix}{where(scope)} is inactive: it issues no new IDs until "
                f"`idmanager activate {manager.prefix}`"
            )


@app.command(epilog=EXIT_CODES)
def activate(
    prefix: Prefix,
    scope: Scope = "",
    actor: Actor = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Let PREFIX issue IDs again (audited). With --json: its statistics."""
    _set_active(prefix, scope, database_url, as_json, True, actor)


@app.command(epilog=EXIT_CODES)
def deactivate(
    prefix: Prefix,
    scope: Scope = "",
    actor: Actor = None,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Make PREFIX refuse new IDs; its history is kept (audited). With --json: its statistics."""
    _set_active(prefix, scope, database_url, as_json, False, actor)


@app.command(epilog=EXIT_CODES)
def health(database_url: DatabaseUrl = DEFAULT_DATABASE_URL, as_json: Json = False) -> None:
    """Check the database with a real allocation that is rolled back; exit 0 healthy, 1 not.

    Leaves nothing behind, so it can run every few seconds. With --json: the seed's report
    {"status", "message", "prefix_count", "test_id_generated", "timestamp", "error_type"}.
    """
    result = run(database_url, lambda s: s.health_check(), commit=False)
    if as_json:
        print_json(result)
    elif result.healthy:
        with output():
            typer.echo(
                f"healthy: {result.message} ({result.prefix_count} "
                f"prefix{'' if result.prefix_count == 1 else 'es'}, "
                f"test ID {result.test_id_generated})"
            )
    else:
        typer.echo(f"unhealthy: {' '.join(result.message.split())}", err=True)
    raise typer.Exit(0 if result.healthy else EXIT_ERROR)


@app.command(epilog=EXIT_CODES)
def migrate(database_url: DatabaseUrl = DEFAULT_DATABASE_URL, as_json: Json = False) -> None:
    """Create or upgrade the database schema with the Alembic migrations (safe to run again).

    With --json: {"status": "up to date"}.
    """
    try:
        backend().migrate(database_url)
    except IdManagerError as exc:
        report(exc)
    if as_json:
        print_json({"status": "up to date"})
    else:
        with output():
            typer.echo("database is up to date")
