"""The ``idmanager`` command line: thin commands over the use cases, for operators and scripts.

Each command opens a sync engine, runs one service operation in its own transaction and
prints the result: text and tables for people, one JSON document with ``--json`` for scripts.
Expected failures are one ``error: …`` line on stderr and an exit code that says what kind.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NoReturn, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from .application import legacy
from .application.service import SyncIdManagerService
from .application.use_cases import SyncIdManagerUseCases
from .domain.entity import IdManager
from .domain.errors import (
    ConflictError,
    IdManagerError,
    InvalidInputError,
    PrefixNotFoundError,
    ResetRefusedError,
    StorageError,
)
from .domain.format import IdRange
from .infrastructure.database import DEFAULT_DATABASE_URL, create_engine, sync_url
from .infrastructure.migrate import migrate as apply_migrations

T = TypeVar("T")

EXIT_ERROR = 1  # the database is unavailable or failing; `health`: unhealthy
EXIT_INPUT = 2  # bad input or configuration (Click's own usage errors are 2 as well)
EXIT_CONFLICT = 3  # the sequence refuses: inactive prefix, backwards reset without --force
EXIT_NOT_FOUND = 4  # the prefix does not exist

EXIT_CODES = (
    "Exit codes: 0 success; 1 database unavailable or failing (for `health`: unhealthy); "
    "2 bad input or configuration (prefix, ID, count, database URL, option); "
    "3 refused by the sequence's state (inactive prefix, backwards reset without --force); "
    "4 unknown prefix."
)

# Below this many IDs printing takes well under a second: no progress bar.
PROGRESS_THRESHOLD = 100_000
# A server that does not answer must not hang a command (or a health probe) for minutes.
CONNECT_TIMEOUT_S = 10
APP_FACTORY = "idmanager.api.app:create_app"

app = typer.Typer(
    help="Human-readable, sequential, never-repeating business IDs (CUS-AAA0001).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # reflows the docstrings' paragraphs
    pretty_exceptions_show_locals=False,  # locals may hold a database password
)

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="IDMANAGER_DATABASE_URL",
        metavar="URL",
        help="SQLAlchemy database URL, e.g. postgresql://user@host/db or sqlite:///ids.db; "
        "any driver named is replaced by the backend's sync driver.",
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")
]
Prefix = Annotated[
    str,
    typer.Argument(
        metavar="PREFIX",
        help="The sequence's prefix, e.g. CUS: trimmed and upper-cased, then letters A-Z, "
        "digits and underscores, at most 255 characters. A period template such as "
        "INV{YYYY} (tokens {YYYY} {YY} {MM} {DD} {FY}) is resolved from --date.",
        show_default=False,
    ),
]
Day = Annotated[
    datetime | None,
    typer.Option(
        "--date",
        formats=["%Y-%m-%d"],
        metavar="YYYY-MM-DD",
        help="The document's date, for a period template such as INV{YYYY} "
        "(default: today, UTC). Each period is its own sequence.",
        show_default=False,
    ),
]
Scope = Annotated[
    str,
    typer.Option(
        "--scope",
        metavar="SCOPE",
        help="Tenant or company that owns the sequence; it does not appear in the IDs. "
        "Each scope has its own sequence per prefix.",
    ),
]


def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"idmanager {version('idmanager')}")
        except PackageNotFoundError:
            typer.echo("idmanager (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Human-readable, sequential, never-repeating business IDs (CUS-AAA0001)."""


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _report(exc: IdManagerError) -> NoReturn:
    """Exit with the line and the code that fit an expected error."""
    message = str(exc)
    if isinstance(exc, ResetRefusedError):
        message = message.replace("force=True", "--force")
    if isinstance(exc, InvalidInputError):
        fail(message, EXIT_INPUT)
    if isinstance(exc, PrefixNotFoundError):
        fail(message, EXIT_NOT_FOUND)
    if isinstance(exc, ConflictError):
        fail(message, EXIT_CONFLICT)
    fail(message, EXIT_ERROR)


def _checked_url(database_url: str) -> URL:
    try:
        return sync_url(database_url)
    except (ValueError, ArgumentError) as exc:
        fail(f"invalid database URL: {exc}", EXIT_INPUT)


def _engine(database_url: str) -> Engine:
    url = _checked_url(database_url)
    options: dict[str, Any] = {}
    if url.get_backend_name() in ("postgresql", "mysql") and "connect_timeout" not in url.query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, **options)


def _run(
    database_url: str,
    operation: Callable[[SyncIdManagerService], T],
    *,
    commit: bool = True,
) -> T:
    """Run one service operation in its own transaction, reporting expected errors."""
    engine = _engine(database_url)
    try:
        return SyncIdManagerUseCases(engine).run(operation, commit=commit)
    except IdManagerError as exc:
        _report(exc)
    finally:
        engine.dispose()


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _where(scope: str) -> str:
    return f" (scope {scope!r})" if scope else ""


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
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Allocate the next ID of PREFIX (or N consecutive ones) and print them, one per line.

    The IDs are committed before they are printed. With --json: {"prefix", "scope",
    "count", "ids"}. An unknown prefix is created on first use.
    """
    on = day.date() if day else None
    ids = _run(database_url, lambda s: s.generate_range(prefix, count, scope=scope, on=on))
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
    except BrokenPipeError:
        # The reader went away (`| head`): keep the interpreter's final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        fail(
            f"output closed before every ID was printed; {ids[0]} to {ids[-1]} "
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
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Make --to the latest ID of PREFIX, refusing to move backwards without --force.

    Resetting an unknown prefix creates it. Every reset is recorded in the audit table.
    With --json: {"prefix", "scope", "previous_id", "latest_id", "next_id", "forced",
    "dry_run"}.
    """
    result = _run(
        database_url,
        lambda s: s.reset_sequence(
            prefix, to, force, scope=scope, on=day.date() if day else None, dry_run=dry_run
        ),
        commit=not dry_run,
    )
    if as_json:
        _print_json(asdict(result))
        return
    moved = f"latest ID {result.previous_id or '(none)'} -> {result.latest_id or '(none)'}"
    subject = f"{result.prefix}{_where(result.scope)}"
    if dry_run:
        typer.echo(
            f"dry run, nothing changed: {subject} would go from {moved}, next ID {result.next_id}"
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
    skip: Annotated[
        int, typer.Option("--skip", metavar="N", help="Leave out the first N sequences.")
    ] = 0,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", help="Show at most N sequences.")
    ] = 100,
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """List the sequences, ordered by scope and prefix.

    With --json: an array of the statistics objects that `show --json` prints.
    """
    managers = _run(
        database_url,
        lambda s: s.get_all_prefixes(scope=scope, skip=skip, limit=limit, active_only=active_only),
        commit=False,
    )
    if as_json:
        _print_json([manager.stats() for manager in managers])
        return
    if not managers:
        typer.echo("no prefixes yet: `idmanager next PREFIX` creates one")
        return
    _console().print(_list_table(managers))


def _list_table(managers: list[IdManager]) -> Table:
    with_scope = any(manager.scope for manager in managers)
    table = Table(box=None, pad_edge=False)
    if with_scope:
        table.add_column("Scope", overflow="fold")
    table.add_column("Prefix", no_wrap=True)
    table.add_column("Latest ID", no_wrap=True)
    table.add_column("Next ID", no_wrap=True)
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
            manager.updated_at.strftime("%Y-%m-%d %H:%M:%S") if manager.updated_at else "-",
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
    stats = _run(
        database_url, lambda s: s.get_prefix_stats(prefix, scope=scope, on=on), commit=False
    )
    if not stats["exists"]:
        fail(
            f"Prefix {stats['prefix']}{_where(scope)} does not exist; "
            f"its first ID would be {stats['next_id']}",
            EXIT_NOT_FOUND,
        )
    if as_json:
        _print_json(stats)
        return
    fmt = stats["format"]
    rows = [
        ("Prefix", stats["prefix"]),
        ("Scope", stats["scope"] or "(default)"),
        ("Latest ID", stats["latest_id"] or "(none issued)"),
        ("Next ID", stats["next_id"]),
        ("Issued", f"{stats['count_issued']:,}"),
        ("Active", "yes" if stats["is_active"] else "no"),
        (
            "Format",
            f"separator {fmt['separator']!r}, {fmt['letter_width']} letters, "
            f"{fmt['digit_width']} digits",
        ),
        ("Letter width used", f"{stats['width_usage']:.2%}"),
        ("Created", stats["created_at"] or "-"),
        ("Updated", stats["updated_at"] or "-"),
    ]
    if stats["warning"]:
        rows.append(("Warning", stats["warning"]))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    _console().print(table)


def _set_active(prefix: str, scope: str, database_url: str, as_json: bool, active: bool) -> None:
    manager = _run(
        database_url,
        lambda s: (s.activate_prefix if active else s.deactivate_prefix)(prefix, scope=scope),
    )
    if as_json:
        _print_json(manager.stats())
    elif active:
        typer.echo(f"{manager.prefix}{_where(scope)} is active: next ID {manager.next_id}")
    else:
        typer.echo(
            f"{manager.prefix}{_where(scope)} is inactive: it issues no new IDs until "
            f"`idmanager activate {manager.prefix}`"
        )


@app.command(epilog=EXIT_CODES)
def activate(
    prefix: Prefix,
    scope: Scope = "",
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Let PREFIX issue IDs again (audited). With --json: its statistics."""
    _set_active(prefix, scope, database_url, as_json, True)


@app.command(epilog=EXIT_CODES)
def deactivate(
    prefix: Prefix,
    scope: Scope = "",
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL,
    as_json: Json = False,
) -> None:
    """Make PREFIX refuse new IDs; its history is kept (audited). With --json: its statistics."""
    _set_active(prefix, scope, database_url, as_json, False)


@app.command(epilog=EXIT_CODES)
def health(database_url: DatabaseUrl = DEFAULT_DATABASE_URL, as_json: Json = False) -> None:
    """Check the database with a real allocation that is rolled back; exit 0 healthy, 1 not.

    Leaves nothing behind, so it can run every few seconds. With --json: the seed's report
    {"status", "message", "prefix_count", "test_id_generated", "timestamp"} and, when
    unhealthy, "error_type".
    """
    report = _run(database_url, lambda s: s.health_check(), commit=False)
    healthy = report["status"] == "healthy"
    if as_json:
        _print_json(report)
    elif healthy:
        typer.echo(
            f"healthy: {report['message']} ({report['prefix_count']} prefixes, "
            f"test ID {report['test_id_generated']})"
        )
    else:
        typer.echo(f"unhealthy: {' '.join(report['message'].split())}", err=True)
    raise typer.Exit(0 if healthy else EXIT_ERROR)


@app.command(epilog=EXIT_CODES)
def migrate(database_url: DatabaseUrl = DEFAULT_DATABASE_URL, as_json: Json = False) -> None:
    """Create or upgrade the database schema with the Alembic migrations (safe to run again).

    With --json: {"status": "up to date"}.
    """
    _checked_url(database_url)
    try:
        apply_migrations(database_url)
    except IdManagerError as exc:
        _report(exc)
    if as_json:
        _print_json({"status": "up to date"})
    else:
        typer.echo("database is up to date")


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings_error(exc: ValueError) -> str:
    """Return a pydantic validation error as one line naming the variables."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    return "; ".join(
        f"IDMANAGER_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in errors()
    )


@app.command(epilog=EXIT_CODES)
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="Address to listen on. Default: IDMANAGER_HOST, else 127.0.0.1. Without API "
            "keys (IDMANAGER_API_KEYS) only a loopback address is allowed.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            metavar="PORT",
            help="Port to listen on. Default: IDMANAGER_PORT, else 8000.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            metavar="N",
            min=1,
            help="Worker processes; each has its own connection pool on the same database.",
        ),
    ] = 1,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            metavar="URL",
            help="SQLAlchemy database URL. Default: IDMANAGER_DATABASE_URL (environment or "
            f".env), else {DEFAULT_DATABASE_URL}.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply the migrations, then serve the HTTP API with uvicorn (docs at /docs).

    Reads every IDMANAGER_* setting from the environment and a .env file; the options
    override them.
    """
    try:
        import uvicorn

        from .settings import Settings
    except ImportError as exc:
        fail(
            f"serve needs the server extra ({exc.name} is missing): pip install 'idmanager[server]'"
        )
    # The app factory runs in uvicorn's workers and reads its settings from the environment.
    for name, value in (("DATABASE_URL", database_url), ("HOST", host), ("PORT", port)):
        if value is not None:
            os.environ[f"IDMANAGER_{name}"] = str(value)
    try:
        settings = Settings()
    except ValueError as exc:
        fail(f"invalid settings: {_settings_error(exc)}", EXIT_INPUT)
    if settings.loopback_only and not _is_loopback(settings.host):
        fail(
            f"refusing to serve on {settings.host} without API keys: set IDMANAGER_API_KEYS "
            "(e.g. 'secret:admin') or serve on a loopback address such as 127.0.0.1",
            EXIT_INPUT,
        )
    if settings.migrate_on_start:
        _checked_url(settings.database_url)
        try:
            apply_migrations(settings.database_url)
        except StorageError as exc:
            # Serve anyway: /health reports the outage and the app retries the migrations.
            typer.echo(f"warning: {' '.join(str(exc).split())}; retrying after start", err=True)
        else:
            # Done once here, rather than by every worker at the same time.
            os.environ["IDMANAGER_MIGRATE_ON_START"] = "false"
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{shown}:{settings.port}"
    typer.echo(f"IdManager serving on {url} — docs at {url}/docs")
    if settings.loopback_only:
        typer.echo("No API keys configured (IDMANAGER_API_KEYS): serving loopback only.")
    uvicorn.run(APP_FACTORY, factory=True, host=settings.host, port=settings.port, workers=workers)
