"""``idmanager doctor``: whether a deployment keeps IdManager's promises, in plain words."""

from __future__ import annotations

import typer

from ..domain.errors import IdManagerError
from ..infrastructure.database import DEFAULT_DATABASE_URL
from ..infrastructure.deployment import read_facts
from ..infrastructure.doctor import Status, diagnose
from ..problems import EXIT_ERROR
from .base import CONNECT_TIMEOUT_S, DatabaseUrl, Json, app, checked_url, print_json, report

_MARKS = {Status.OK: "ok", Status.WARN: "warn", Status.FAIL: "FAIL"}


@app.command(
    epilog="Exit codes: 0 every promise holds; 1 one does not (or the database cannot be "
    "reached); 2 bad input."
)
def doctor(database_url: DatabaseUrl = DEFAULT_DATABASE_URL, as_json: Json = False) -> None:
    """Check what IdManager's promises need from the deployment, and say whether it holds.

    Reads, never writes. PostgreSQL: whether a promoted standby would have every
    acknowledged commit (synchronous replication). Galera: the cluster's state, and where to
    send writes. SQLite: a network file system, the journal mode. Everywhere: the schema's
    revision, and stored sequences that write the same ID. With --json: {"backend", "holds",
    "checks": [{"name", "status", "message"}]}.
    """
    url = checked_url(database_url)
    try:
        diagnosis = diagnose(read_facts(url, connect_timeout=CONNECT_TIMEOUT_S))
    except IdManagerError as exc:
        report(exc)
    if as_json:
        print_json(diagnosis)
    else:
        typer.echo(f"{diagnosis.backend}:")
        for check in diagnosis.checks:
            typer.echo(f"  {_MARKS[check.status]:<4}  {check.name}: {check.message}")
        typer.echo(
            "Every promise holds."
            if diagnosis.holds
            else "A promise does not hold: see the checks marked FAIL."
        )
    raise typer.Exit(0 if diagnosis.holds else EXIT_ERROR)
