"""What a deployment is made of, read from its database without changing anything.

:func:`read_facts` connects once and reads the replication state (PostgreSQL's standbys, a
Galera node's cluster), SQLite's file system and journal mode, the schema's revision and the
pairs of stored sequences that write the same ID. :mod:`.doctor` judges them.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import sqlalchemy as sa
from sqlalchemy import Connection, Table, select
from sqlalchemy.engine import URL

from ..domain.errors import IdManagerError
from ..domain.format import IdFormat, collision
from .database import create_engine, sqlite_path
from .errors import translate_errors
from .migrate import revisions
from .models import IdManagerModel

_TABLE = cast(Table, IdManagerModel.__table__)
MOUNTS = Path("/proc/mounts")


@dataclass(frozen=True, slots=True)
class Standby:
    """A standby streaming from a PostgreSQL primary (``pg_stat_replication``)."""

    name: str  # application_name
    state: str | None  # streaming, catchup …; None: hidden from this user
    sync_state: str | None  # sync, quorum, potential, async; None: hidden


@dataclass(frozen=True, slots=True)
class PostgresFacts:
    in_recovery: bool  # this server is itself a standby
    synchronous_commit: str
    synchronous_standby_names: str
    standbys: tuple[Standby, ...]


@dataclass(frozen=True, slots=True)
class GaleraFacts:
    cluster_status: str  # Primary, non-Primary, Disconnected
    local_state: str  # Synced, Donor/Desynced, Joining …
    cluster_size: int
    retry_autocommit: int


@dataclass(frozen=True, slots=True)
class MysqlFacts:
    read_only: bool
    galera: GaleraFacts | None  # None: not a Galera node


@dataclass(frozen=True, slots=True)
class SqliteFacts:
    path: str | None  # None: in memory
    exists: bool
    file_system: str | None  # the mount type of the file's folder; None: unknown
    journal_mode: str | None


@dataclass(frozen=True, slots=True)
class Ambiguity:
    """Two stored sequences of one scope that write one same ID."""

    scope: str
    first: str
    second: str
    example: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What :func:`read_facts` found. ``schema`` None: never migrated (or unreadable:
    ``schema_error`` says why)."""

    backend: str
    schema: str | None
    head: str | None
    ambiguous: tuple[Ambiguity, ...] = ()
    schema_error: str | None = None
    postgres: PostgresFacts | None = None
    mysql: MysqlFacts | None = None
    sqlite: SqliteFacts | None = None


def read_facts(url: URL, *, connect_timeout: int = 10) -> Facts:
    """Read what :mod:`.doctor` needs from the database at ``url`` (nothing is written).

    Raises:
        StorageError: the database cannot be reached.
    """
    backend = url.get_backend_name()
    lite = _sqlite_facts(url) if backend == "sqlite" else None
    if lite is not None and not lite.exists:
        return Facts(backend, None, None, sqlite=lite)
    engine = _engine(url, connect_timeout)
    try:
        with translate_errors(), engine.connect() as connection:
            postgres = _postgres_facts(connection) if backend == "postgresql" else None
            mysql = _mysql_facts(connection) if backend == "mysql" else None
        try:
            with translate_errors(), engine.connect() as connection:
                schema, head = revisions(connection)
                ambiguous = _ambiguous(connection) if schema else ()
        except IdManagerError as exc:  # a Galera node out of its cluster refuses reads
            return Facts(backend, None, None, (), str(exc), postgres, mysql, lite)
        return Facts(backend, schema, head, ambiguous, None, postgres, mysql, lite)
    finally:
        engine.dispose()


def _engine(url: URL, connect_timeout: int) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        # Read-only, and without IdManager's settings (which switch the file to WAL).
        return sa.create_engine(
            f"sqlite+pysqlite:///file:{url.database}?mode=ro&uri=true", poolclass=sa.NullPool
        )
    timeout = {"connect_timeout": connect_timeout}
    return create_engine(url, poolclass=sa.NullPool, connect_args=timeout)


def _postgres_facts(connection: Connection) -> PostgresFacts:
    in_recovery, commit, names = connection.exec_driver_sql(
        "SELECT pg_is_in_recovery(), current_setting('synchronous_commit'), "
        "current_setting('synchronous_standby_names')"
    ).one()
    standbys = connection.exec_driver_sql(
        "SELECT application_name, state, sync_state FROM pg_stat_replication "
        "ORDER BY application_name"
    ).all()
    # Without pg_read_all_stats (pg_monitor has it) every column but the pid reads NULL.
    found = tuple(Standby(name or "(hidden)", state, sync) for name, state, sync in standbys)
    return PostgresFacts(bool(in_recovery), str(commit), str(names), found)


def _mysql_facts(connection: Connection) -> MysqlFacts:
    def values(kind: str, names: tuple[str, ...]) -> dict[str, str]:
        listed = ", ".join(f"'{name}'" for name in names)
        rows = connection.exec_driver_sql(
            f"SHOW GLOBAL {kind} WHERE Variable_name IN ({listed})"
        ).all()
        return {str(name).lower(): str(value) for name, value in rows}

    variables = values(
        "VARIABLES", ("read_only", "wsrep_on", "wsrep_provider", "wsrep_retry_autocommit")
    )
    read_only = variables.get("read_only", "OFF").upper() in ("ON", "1")
    if variables.get("wsrep_on", "OFF").upper() not in ("ON", "1") or variables.get(
        "wsrep_provider", "none"
    ).lower() in ("", "none"):
        return MysqlFacts(read_only, None)
    status = values(
        "STATUS", ("wsrep_cluster_status", "wsrep_local_state_comment", "wsrep_cluster_size")
    )
    galera = GaleraFacts(
        status.get("wsrep_cluster_status", "unknown"),
        status.get("wsrep_local_state_comment", "unknown"),
        int(status.get("wsrep_cluster_size", "0") or 0),
        int(variables.get("wsrep_retry_autocommit", "0") or 0),
    )
    return MysqlFacts(read_only, galera)


def _sqlite_facts(url: URL) -> SqliteFacts:
    path = sqlite_path(url)
    if path is None:
        return SqliteFacts(None, False, None, None)
    if not path.exists():
        return SqliteFacts(str(path), False, mount_type(path.resolve().parent), None)
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    except sqlite3.Error:
        mode = None
    finally:
        connection.close()
    return SqliteFacts(str(path), True, mount_type(path.resolve().parent), mode)


def mount_type(folder: Path, mounts: str | None = None) -> str | None:
    """Return the file system type of ``folder`` from ``/proc/mounts`` (or ``mounts``' text):
    that of the longest mount point containing it. None when it cannot be told."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and tabs in a mount point are written as octal escapes (\040).
        point = Path(fields[1].encode().decode("unicode_escape"))
        if (folder == point or point in folder.parents) and (
            best is None or len(point.parts) >= best[0]
        ):
            best = (len(point.parts), fields[2])
    return best[1] if best else None


def _ambiguous(connection: Connection) -> tuple[Ambiguity, ...]:
    """Return the pairs of stored sequences, per scope, that write one same ID.

    Only sequences without a separator can, and only when one prefix starts the other.
    """
    t = _TABLE.c
    rows = connection.execute(
        select(t.scope, t.prefix, t.letter_width, t.digit_width).where(t.separator == "")
    )
    scopes: dict[str, dict[str, IdFormat]] = defaultdict(dict)
    for scope, prefix, letters, digits in rows:
        scopes[scope][prefix] = IdFormat("", letters, digits)
    found = []
    for scope, formats in sorted(scopes.items()):
        for prefix, fmt in sorted(formats.items()):
            for shorter in (prefix[:i] for i in range(1, len(prefix))):
                if shorter in formats:
                    example = collision(shorter, formats[shorter], prefix, fmt)
                    if example is not None:
                        found.append(Ambiguity(scope, shorter, prefix, example))
    return tuple(found)
