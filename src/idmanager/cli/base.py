"""What every command shares: the Typer app, common options, exit codes and error reporting.

Each command runs one use case in its own transaction and prints the result: text and
tables for people, one JSON document with ``--json`` for scripts. Expected failures are one
``error: …`` line on stderr and an exit code that says what kind (``idmanager.problems``).

Commands reach storage through a :class:`Backend`: the database named by ``--database-url``,
or, in tests, whatever ``CliRunner.invoke(app, args, obj=backend)`` hands in.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from ..application.options import ServiceOptions
from ..application.results import to_json
from ..application.service import SyncIdManagerService
from ..application.use_cases import SyncIdManagerUseCases
from ..compose import connect
from ..domain.errors import (
    AccessDeniedError,
    IdManagerError,
    InvalidInputError,
    ResetRefusedError,
)
from ..domain.repository import Claim
from ..infrastructure.database import create_engine, sqlite_path, sync_url
from ..infrastructure.migrate import migrate as apply_migrations
from ..problems import EXIT_ERROR, EXIT_INPUT, KINDS, kind_of

T = TypeVar("T")
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _exit_codes() -> str:
    codes: dict[int, list[str]] = {0: ["success"]}
    for found in KINDS:
        # Access is decided by the HTTP service's keys: never a command's outcome.
        if found.error is not None and not issubclass(found.error, AccessDeniedError):
            codes.setdefault(found.exit_code, []).append(found.title.lower())
    codes[EXIT_ERROR].append("`health`: unhealthy")
    return "Exit codes: " + "; ".join(
        f"{code} {', '.join(dict.fromkeys(names))}" for code, names in sorted(codes.items())
    )


EXIT_CODES = _exit_codes()

# Below this many IDs printing takes well under a second: no progress bar.
PROGRESS_THRESHOLD = 100_000
# A server that does not answer must not hang a command (or a health probe) for minutes.
CONNECT_TIMEOUT_S = 10

app = typer.Typer(
    help="Human-readable, sequential, never-repeating business IDs (CUS-AAA0001).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    rich_markup_mode="markdown",  # reflows the docstrings' paragraphs
    pretty_exceptions_show_locals=False,  # locals may hold a database password
)


def default_actor() -> str:
    """Return who runs the command, for the audit trail: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
Actor = Annotated[
    str | None,
    typer.Option(
        "--actor",
        envvar="IDMANAGER_ACTOR",
        metavar="NAME",
        help="Who makes the change, as the audit trail records it. Default: user@host.",
        show_default=False,
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
    fiscal_year_start: Annotated[
        int,
        typer.Option(
            "--fiscal-year-start",
            metavar="MONTH",
            envvar="IDMANAGER_FISCAL_YEAR_START",
            min=1,
            max=12,
            help="The first month of the fiscal year, for {FY} in period templates (4: April "
            "to March, named by the year it ends in). As the service's setting.",
        ),
    ] = 1,
) -> None:
    """Human-readable, sequential, never-repeating business IDs (CUS-AAA0001)."""
    _current_context().meta[_FISCAL_YEAR_START] = fiscal_year_start


_FISCAL_YEAR_START = "idmanager.fiscal_year_start"


def options(actor: str | None) -> ServiceOptions:
    """The service options of a command: its actor, and the global --fiscal-year-start."""
    meta = _current_context().meta
    return ServiceOptions(actor=actor, fiscal_year_start=meta.get(_FISCAL_YEAR_START, 1))


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def report(exc: IdManagerError) -> NoReturn:
    """Exit with the line and the code of an expected error's kind."""
    message = str(exc)
    if isinstance(exc, ResetRefusedError):
        message = message.replace("force=True", "--force")
    fail(message, kind_of(exc).exit_code)


def checked_url(database_url: str) -> URL:
    """Return the database URL with its sync driver, or exit 2 naming what is wrong."""
    try:
        return sync_url(database_url)
    except (ValueError, ArgumentError) as exc:
        fail(f"invalid database URL: {exc}", EXIT_INPUT)


def engine_for(url: str | URL) -> Engine:
    """Create a sync engine for a command: short connect timeout, the backend's settings."""
    url = checked_url(str(url)) if isinstance(url, str) else url
    options: dict[str, Any] = {}
    if url.get_backend_name() in ("postgresql", "mysql") and "connect_timeout" not in url.query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, **options)


def require_sqlite_file(database_url: str) -> None:
    """Exit 2 when the URL names a SQLite file that does not exist (a typo, most likely).

    Opening it would create an empty database, which every command but ``migrate`` and
    ``serve`` would then find unmigrated. A missing folder is left to the engine, which
    names the folder.
    """
    url = checked_url(database_url)
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is None or path.exists():
        return
    folder = path.parent.resolve()
    if folder.is_dir():
        fail(
            f"SQLite database {folder / path.name} does not exist; run "
            f"`idmanager migrate --database-url {shlex.quote(database_url)}` to create it",
            EXIT_INPUT,
        )


class Backend:
    """Where commands find their storage: a real database, by URL."""

    @contextmanager
    def use_cases(
        self, database_url: str, options: ServiceOptions
    ) -> Iterator[SyncIdManagerUseCases]:
        """Yield use cases on the database, disposed of afterwards.

        A SQLite file must exist: only ``migrate`` (and ``serve``) create one.
        """
        require_sqlite_file(database_url)
        engine = engine_for(database_url)
        try:
            yield connect(engine, options)
        finally:
            engine.dispose()

    def migrate(self, database_url: str) -> None:
        """Create or upgrade the schema."""
        checked_url(database_url)
        apply_migrations(database_url)


def _current_context() -> Any:
    # Recent Typer runs on a copy of Click of its own (and Click may not be installed at
    # all); older Typer runs on Click, whose context stack is then the one to read.
    getter = getattr(typer.main, "get_current_context", None)
    if getter is None:
        import click

        getter = click.get_current_context
    return getter()


def backend() -> Backend:
    """Return the backend of this invocation (the SQL one unless a test gave another)."""
    found = _current_context().find_object(Backend)
    return found if found is not None else Backend()


def run(
    database_url: str,
    operation: Callable[[SyncIdManagerService], T],
    *,
    commit: bool = True,
    actor: str | None = None,
) -> T:
    """Run one service operation in its own transaction, reporting expected errors."""
    try:
        with backend().use_cases(database_url, options(actor)) as use_cases:
            return use_cases.run(operation, commit=commit)
    except IdManagerError as exc:
        report(exc)


# The command line's idempotency keys are its own: one caller, apart from API keys.
CLI_OWNER = "cli"


def command_claim(key: str, *request: object) -> Claim:
    """Return the claim of a command run with ``--idempotency-key``.

    Raises:
        InvalidInputError: the key is not 1 to 255 visible ASCII characters.
    """
    if not _KEY.fullmatch(key):
        raise InvalidInputError("--idempotency-key must be 1 to 255 visible ASCII characters")
    text = json.dumps([str(part) for part in request], separators=(",", ":"))
    return Claim(CLI_OWNER, key, hashlib.sha256(text.encode()).hexdigest())


def silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so the interpreter's final flush of what is
    still buffered cannot fail (and print a traceback) after an error was reported."""
    # No descriptor (a test's buffer, a closed stdout): nothing would be flushed to one.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        target = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, target)
        os.close(devnull)


@contextmanager
def output(done: str = "") -> Iterator[None]:
    """Report a failure to write stdout (a full disk, a closed pipe) as one error line, exit 1.

    ``done`` says what the command did before printing, e.g. "the reset was committed".
    """
    try:
        yield
        sys.stdout.flush()
    except OSError as exc:
        silence_stdout()
        reason = exc.strerror or type(exc).__name__
        fail(f"could not write the output ({reason})" + (f"; {done}" if done else ""))


def print_json(document: Any, done: str = "") -> None:
    """Print a result (or any JSON-ready data) as one indented JSON document."""
    with output(done):
        typer.echo(json.dumps(to_json(document), indent=2, ensure_ascii=False))


# Wide enough for any table: a file or a pipe gets whole lines, cut by nothing.
UNLIMITED_WIDTH = 10_000


def console() -> Console:
    """Return a console for stdout: the terminal's width, or unlimited when redirected
    (unless COLUMNS says otherwise)."""
    isatty = getattr(sys.stdout, "isatty", None)
    redirected = not (isatty and isatty()) and "COLUMNS" not in os.environ
    return Console(highlight=False, soft_wrap=False, width=UNLIMITED_WIDTH if redirected else None)


def where(scope: str) -> str:
    return f" (scope {scope!r})" if scope else ""


def when(moment: datetime | None) -> str:
    """Return a time for a table, in UTC to the second."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
