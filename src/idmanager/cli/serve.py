"""``idmanager serve``: migrate, then serve the HTTP API with uvicorn."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from ..domain.errors import InvalidInputError, StorageError
from ..infrastructure.database import DEFAULT_DATABASE_URL
from ..infrastructure.migrate import migrate as apply_migrations
from ..problems import EXIT_INPUT
from .base import EXIT_CODES, app, checked_url, fail


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
        from ..api.serving import APP_FACTORY, run
        from ..settings import Settings
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
            "(e.g. 's3cret-admin-key-1:admin') or serve on a loopback address such as "
            "127.0.0.1",
            EXIT_INPUT,
        )
    if settings.migrate_on_start:
        checked_url(settings.database_url)
        try:
            apply_migrations(settings.database_url)
        except InvalidInputError as exc:
            fail(str(exc), EXIT_INPUT)
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
    run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
    )
