"""Whether a deployment keeps IdManager's promises, judged from the facts of its database.

IdManager promises that no ID is ever issued twice and that committed IDs have no gaps. The
database keeps them, as long as what it acknowledges survives: a standby promoted after a
failure must have every commit the primary acknowledged (synchronous replication), a SQLite
file needs locks the file system really takes, and the schema must be IdManager's. Each
:class:`Check` says in plain words what holds; ``fail`` means a promise does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .deployment import Facts, GaleraFacts, MysqlFacts, PostgresFacts, SqliteFacts

# Measured by tests/reliability/test_replication.py on a throwaway primary and standby.
ASYNC_MEASURE = (
    "measured: with the standby 2 s behind, a failover issued again every ID acknowledged in "
    "those 2 s, hundreds to thousands of them"
)
# Network and user-space file systems: SQLite's locks there may not exclude another writer.
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs"}
    | {"davfs", "ocfs2", "gfs2", "beegfs", "sshfs", "virtiofs"}
)
_SYNCHRONOUS = ("on", "remote_apply")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # the promises hold, with a condition or a cost worth knowing
    FAIL = "fail"  # a promise does not hold


@dataclass(frozen=True, slots=True)
class Check:
    """One finding: what was checked, how it stands, and why, in words."""

    name: str
    status: Status
    message: str


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Every check of one deployment; ``holds``: none failed, every promise holds."""

    backend: str
    holds: bool
    checks: tuple[Check, ...]


def diagnose(facts: Facts) -> Diagnosis:
    """Judge the facts read from a deployment's database."""
    checks: list[Check] = []
    if facts.postgres is not None:
        checks += _postgres(facts.postgres)
    if facts.mysql is not None:
        checks += _mysql(facts.mysql)
    if facts.sqlite is not None:
        checks += _sqlite(facts.sqlite)
    checks.append(_schema(facts))
    if facts.schema is not None:
        checks.append(_ambiguity(facts))
    holds = all(check.status is not Status.FAIL for check in checks)
    return Diagnosis(facts.backend, holds, tuple(checks))


def _postgres(facts: PostgresFacts) -> list[Check]:
    if facts.in_recovery:
        return [
            Check(
                "server",
                Status.FAIL,
                "This server is a standby: it refuses writes. Point IdManager at the primary, "
                "or list every host in the URL (target_session_attrs=read-write picks the "
                "primary).",
            )
        ]
    checks = []
    if facts.synchronous_commit == "off":
        checks.append(
            Check(
                "durability",
                Status.FAIL,
                "synchronous_commit is off: the server acknowledges a commit before it is on "
                "disk, so a crash of PostgreSQL loses its last acknowledged commits and their "
                "IDs are issued again. Set synchronous_commit = on.",
            )
        )
    checks.append(_replication(facts))
    return checks


def _replication(facts: PostgresFacts) -> Check:
    if not facts.standbys:
        return Check(
            "replication",
            Status.OK,
            "No standby streams from this server: a failure waits for it to restart, and "
            "nothing it acknowledged is lost.",
        )
    if any(standby.sync_state is None for standby in facts.standbys):
        return Check(
            "replication",
            Status.WARN,
            "The standbys' sync_state is hidden from this user: run doctor as a user with the "
            "pg_monitor role to check that a failover keeps every acknowledged ID.",
        )
    waits = facts.synchronous_commit in (*_SYNCHRONOUS, "remote_write")
    synchronous = [s.name for s in facts.standbys if waits and s.sync_state in ("sync", "quorum")]
    others = [s.name for s in facts.standbys if s.name not in synchronous]
    if not synchronous:
        return Check(
            "replication",
            Status.FAIL,
            f"Replication to {_names(others)} is asynchronous (synchronous_standby_names = "
            f"{facts.synchronous_standby_names!r}, synchronous_commit = "
            f"{facts.synchronous_commit}): if the primary fails and a standby is promoted, "
            "the IDs the primary acknowledged in its last moments are issued again "
            f"({ASYNC_MEASURE}). Make the standby synchronous (synchronous_standby_names, "
            "synchronous_commit = on) or never promote it.",
        )
    if others:
        return Check(
            "replication",
            Status.WARN,
            f"{_names(synchronous)} synchronous, {_names(others)} not: after a failure promote "
            f"only {_names(synchronous)}; promoting another can issue acknowledged IDs again.",
        )
    note = (
        " (remote_write: a standby's OS crash at the same moment could still lose commits)"
        if facts.synchronous_commit == "remote_write"
        else ""
    )
    return Check(
        "replication",
        Status.WARN if note else Status.OK,
        f"{_names(synchronous)} synchronous (synchronous_commit = {facts.synchronous_commit}): "
        f"every commit waits for the standby, so promoting it loses no acknowledged ID{note}.",
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names)
    return f"standby {shown}" if len(names) == 1 else f"standbys {shown}"


def _mysql(facts: MysqlFacts) -> list[Check]:
    checks = []
    if facts.read_only:
        checks.append(
            Check("server", Status.FAIL, "The server is read-only: it refuses allocations.")
        )
    if facts.galera is None:
        checks.append(
            Check(
                "replication",
                Status.OK,
                "A single MySQL/MariaDB server (no Galera). A replica of it is asynchronous "
                "unless semi-synchronous replication is on: promoting an asynchronous one can "
                "issue acknowledged IDs again.",
            )
        )
        return checks
    return [*checks, *_galera(facts.galera)]


def _galera(facts: GaleraFacts) -> list[Check]:
    state = f"{facts.cluster_size} nodes, {facts.cluster_status}, this node {facts.local_state}"
    if facts.cluster_status != "Primary":
        cluster = Check(
            "cluster",
            Status.FAIL,
            f"Galera: {state}. This node is cut off from the primary component: it refuses "
            "IdManager's statements until it rejoins.",
        )
    elif facts.local_state not in ("Synced", "Donor/Desynced"):
        cluster = Check(
            "cluster", Status.FAIL, f"Galera: {state}. This node is not ready for clients."
        )
    elif facts.cluster_size < 3:
        cluster = Check(
            "cluster",
            Status.WARN,
            f"Galera: {state}. Fewer than 3 nodes lose their quorum when one fails, and "
            "then refuse every write: use 3 or more (or an arbitrator, garbd).",
        )
    else:
        cluster = Check(
            "cluster",
            Status.OK,
            f"Galera: {state}. A commit is certified by the whole cluster before it is "
            "acknowledged: a node lost keeps every acknowledged ID.",
        )
    writes = Check(
        "galera writes",
        Status.OK,
        "Writers of one prefix on several nodes conflict at commit: IdManager runs its own "
        "transactions again (5 times, with jittered backoff), the server retries a lone "
        f"allocation wsrep_retry_autocommit = {facts.retry_autocommit} times, and a caller's "
        "transaction gets a retryable conflict error. For the fewest conflicts, send each "
        "prefix's writes to one node (or all writes to one node).",
    )
    return [cluster, writes]


def _sqlite(facts: SqliteFacts) -> list[Check]:
    if facts.path is None:
        return [Check("file", Status.FAIL, "An in-memory database forgets every ID at exit.")]
    checks = []
    if not facts.exists:
        folder = Path(facts.path).parent
        create = "create it with" if folder.is_dir() else f"create its folder {folder}, then"
        checks.append(
            Check(
                "file",
                Status.FAIL,
                f"{facts.path} does not exist: check the URL, or {create} `idmanager migrate`.",
            )
        )
    kind = facts.file_system
    if kind is not None and (kind in NETWORK_FILE_SYSTEMS or kind.startswith("fuse")):
        checks.append(
            Check(
                "file system",
                Status.FAIL,
                f"{facts.path} is on a {kind} file system: SQLite's locks are not reliable "
                "there, so two writers (two hosts above all) can issue the same ID. Keep the "
                "file on a local disk of the one host that serves it.",
            )
        )
    else:
        checks.append(
            Check(
                "file system",
                Status.OK,
                f"{facts.path} is on a local file system ({kind or 'type unknown'}); every "
                "process writing it must run on this host.",
            )
        )
    if facts.exists and facts.journal_mode != "wal":
        checks.append(
            Check(
                "journal",
                Status.WARN,
                f"Journal mode {facts.journal_mode}, not WAL: readers and the writer block "
                "each other (more 'busy' answers). IdManager switches a file to WAL when it "
                "connects; it cannot when the file or its folder is read-only.",
            )
        )
    return checks


def _schema(facts: Facts) -> Check:
    if facts.schema_error is not None:
        return Check("schema", Status.FAIL, f"The schema could not be read: {facts.schema_error}")
    if facts.schema is None:
        return Check(
            "schema", Status.FAIL, "The database is not migrated: run `idmanager migrate`."
        )
    if facts.schema != facts.head:
        return Check(
            "schema",
            Status.FAIL,
            f"The schema is at revision {facts.schema}, this IdManager's is {facts.head}: run "
            "`idmanager migrate` (or run the IdManager that migrated it).",
        )
    return Check("schema", Status.OK, f"Migrated (revision {facts.schema}).")


def _ambiguity(facts: Facts) -> Check:
    if not facts.ambiguous:
        return Check(
            "sequences", Status.OK, "No two stored sequences of one scope write the same ID."
        )
    shown = "; ".join(
        f"{a.first} and {a.second}{f' (scope {a.scope!r})' if a.scope else ''} both write "
        f"{a.example}"
        for a in facts.ambiguous[:5]
    )
    more = f" and {len(facts.ambiguous) - 5} more" if len(facts.ambiguous) > 5 else ""
    return Check(
        "sequences",
        Status.FAIL,
        f"Sequences without a separator write the same IDs: {shown}{more}. Deactivate one "
        "of each pair (or, while it has issued no ID, give it a separator).",
    )
