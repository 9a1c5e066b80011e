"""What every command shares: the Typer app, common options, exit codes and error reporting.

Each command opens a sync engine, runs one service operation in its own transaction and
prints the result: text and tables for people, one JSON document with ``--json`` for scripts.
Expected failures are one ``error: …`` line on stderr and an exit code that says what kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from ..application.service import SyncIdManagerService
from ..application.use_cases import SyncIdManagerUseCases
from ..domain.errors import (
    ConflictError,
    IdManagerError,
    InvalidInputError,
    PrefixNotFoundError,
    ResetRefusedError,
)
from ..infrastructure.database import create_engine, sync_url

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
