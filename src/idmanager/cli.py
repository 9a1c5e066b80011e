"""The ``idmanager`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from .domain.errors import IdManagerError
from .infrastructure.database import DEFAULT_DATABASE_URL
from .infrastructure.migrate import migrate as apply_migrations

app = typer.Typer(
    help="Human-readable, sequential, never-repeating business IDs.", no_args_is_help=True
)

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="IDMANAGER_DATABASE_URL",
        help="SQLAlchemy database URL, e.g. postgresql://user@host/db or sqlite:///file.db.",
    ),
]


@app.callback()
def main() -> None:
    """Human-readable, sequential, never-repeating business IDs."""


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def migrate(database_url: DatabaseUrl = DEFAULT_DATABASE_URL) -> None:
    """Create or upgrade the database schema (safe to run again)."""
    try:
        apply_migrations(database_url)
    except (IdManagerError, ValueError) as exc:
        fail(str(exc))
    typer.echo("database is up to date")
