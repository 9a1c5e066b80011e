"""``idmanager doctor``: its judgement on facts made up here, and the command on SQLite files.

The facts of real clusters (a synchronous and an asynchronous standby, a Galera node) are read
in tests/reliability/test_replication.py.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from idmanager.cli import app
from idmanager.infrastructure.deployment import (
    Ambiguity,
    Facts,
    GaleraFacts,
    MysqlFacts,
    PostgresFacts,
    SqliteFacts,
    Standby,
    mount_type,
)
from idmanager.infrastructure.doctor import Status, diagnose
from idmanager.infrastructure.migrate import migrate

MIGRATED = Facts("postgresql", "003", "003")
PRIMARY = PostgresFacts(False, "on", "", ())
SYNC = Standby("standby", "streaming", "sync")
ASYNC = Standby("replica2", "streaming", "async")


def _statuses(facts: Facts) -> dict[str, Status]:
    return {check.name: check.status for check in diagnose(facts).checks}


def _message(facts: Facts, name: str) -> str:
    return next(check.message for check in diagnose(facts).checks if check.name == name)


def _pg(**changes: object) -> Facts:
    return replace(MIGRATED, postgres=replace(PRIMARY, **changes))


def test_a_primary_alone_keeps_every_promise() -> None:
    diagnosis = diagnose(_pg())
    assert diagnosis.holds
    assert {c.name: c.status for c in diagnosis.checks} == {
        "replication": Status.OK,
        "schema": Status.OK,
        "sequences": Status.OK,
    }


def test_a_synchronous_standby_keeps_every_promise() -> None:
    facts = _pg(standbys=(SYNC,), synchronous_standby_names="standby")
    assert diagnose(facts).holds
    assert "promoting it loses no acknowledged ID" in _message(facts, "replication")


def test_an_asynchronous_standby_breaks_the_promise_and_says_how_much() -> None:
    facts = _pg(standbys=(Standby("standby", "streaming", "async"),))
    diagnosis = diagnose(facts)
    assert not diagnosis.holds
    message = _message(facts, "replication")
    assert "asynchronous" in message and "issued again" in message
    assert "hundreds" in message  # the figure measured on a real failover


@pytest.mark.parametrize("commit", ["local", "off"])
def test_a_commit_that_does_not_wait_for_the_standby_is_asynchronous(commit: str) -> None:
    assert _statuses(_pg(standbys=(SYNC,), synchronous_commit=commit))["replication"] is (
        Status.FAIL
    )


def test_synchronous_commit_off_fails_even_without_a_standby() -> None:
    statuses = _statuses(_pg(synchronous_commit="off"))
    assert statuses["durability"] is Status.FAIL


def test_one_synchronous_standby_among_asynchronous_ones_is_a_condition() -> None:
    facts = _pg(standbys=(SYNC, ASYNC))
    assert diagnose(facts).holds
    assert _statuses(facts)["replication"] is Status.WARN
    assert "promote only standby 'standby'" in _message(facts, "replication")


def test_remote_write_holds_with_a_warning() -> None:
    assert _statuses(_pg(standbys=(SYNC,), synchronous_commit="remote_write"))["replication"] is (
        Status.WARN
    )


def test_standbys_hidden_from_the_user_cannot_be_judged() -> None:
    facts = _pg(standbys=(Standby("standby", None, None),))
    assert _statuses(facts)["replication"] is Status.WARN
    assert "pg_monitor" in _message(facts, "replication")


def test_connected_to_a_standby_fails() -> None:
    facts = _pg(in_recovery=True)
    assert _statuses(facts)["server"] is Status.FAIL
    assert "target_session_attrs=read-write" in _message(facts, "server")


def _galera(**changes: object) -> Facts:
    node = replace(GaleraFacts("Primary", "Synced", 3, 1), **changes)
    return replace(MIGRATED, backend="mysql", mysql=MysqlFacts(False, node))


def test_a_synced_galera_node_holds_and_advises_one_node_per_prefix() -> None:
    facts = _galera()
    assert diagnose(facts).holds
    assert _statuses(facts)["cluster"] is Status.OK
    assert "send each prefix's writes to one node" in _message(facts, "galera writes")
    assert "wsrep_retry_autocommit = 1" in _message(facts, "galera writes")


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"cluster_status": "non-Primary"}, Status.FAIL),
        ({"local_state": "Joining"}, Status.FAIL),
        ({"local_state": "Donor/Desynced"}, Status.OK),
        ({"cluster_size": 2}, Status.WARN),
    ],
)
def test_a_galera_node_out_of_step(changes: dict[str, object], status: Status) -> None:
    assert _statuses(_galera(**changes))["cluster"] is status


def test_a_plain_mysql_server_and_a_read_only_one() -> None:
    plain = replace(MIGRATED, backend="mysql", mysql=MysqlFacts(False, None))
    assert diagnose(plain).holds
    read_only = replace(plain, mysql=MysqlFacts(True, None))
    assert _statuses(read_only)["server"] is Status.FAIL


def _sqlite(**changes: object) -> Facts:
    lite = replace(SqliteFacts("/data/ids.db", True, "ext4", "wal"), **changes)
    return replace(MIGRATED, backend="sqlite", sqlite=lite)


@pytest.mark.parametrize("kind", ["nfs4", "cifs", "fuse.sshfs", "fuseblk", "9p"])
def test_sqlite_on_a_network_or_user_space_file_system_fails(kind: str) -> None:
    facts = _sqlite(file_system=kind)
    assert _statuses(facts)["file system"] is Status.FAIL
    assert "same ID" in _message(facts, "file system")


@pytest.mark.parametrize("kind", ["ext4", "xfs", "btrfs", "tmpfs", "overlay", None])
def test_sqlite_on_a_local_file_system_holds(kind: str | None) -> None:
    assert diagnose(_sqlite(file_system=kind)).holds


def test_sqlite_without_wal_is_a_warning() -> None:
    facts = _sqlite(journal_mode="delete")
    assert diagnose(facts).holds and _statuses(facts)["journal"] is Status.WARN


def test_a_sqlite_file_that_does_not_exist_fails_and_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    facts = replace(
        MIGRATED, backend="sqlite", sqlite=SqliteFacts(str(missing), False, "ext4", None)
    )
    assert _statuses(facts)["file"] is Status.FAIL
    assert "does not exist" in _message(facts, "file")
    assert "create it with `idmanager migrate`" in _message(facts, "file")
    nowhere = tmp_path / "no" / "x.db"
    facts = replace(MIGRATED, backend="sqlite", sqlite=SqliteFacts(str(nowhere), False, None, None))
    assert f"create its folder {nowhere.parent}, then" in _message(facts, "file")


def test_sqlite_in_memory_fails() -> None:
    facts = replace(MIGRATED, backend="sqlite", sqlite=SqliteFacts(None, False, None, None))
    assert _statuses(facts)["file"] is Status.FAIL


@pytest.mark.parametrize(
    ("schema", "error", "words"),
    [(None, None, "not migrated"), ("002", None, "revision 002"), (None, "1047", "1047")],
)
def test_a_schema_not_migrated_fails(schema: str | None, error: str | None, words: str) -> None:
    facts = replace(_pg(), schema=schema, schema_error=error)
    assert _statuses(facts)["schema"] is Status.FAIL and words in _message(facts, "schema")
    assert ("sequences" in _statuses(facts)) is (schema is not None)  # no table: not read


def test_ambiguous_sequences_are_named() -> None:
    facts = replace(_pg(), ambiguous=(Ambiguity("", "COL", "COLA", "COLAAA0001"),))
    assert _statuses(facts)["sequences"] is Status.FAIL
    assert "COL and COLA both write COLAAA0001" in _message(facts, "sequences")


MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,vers=4.2 0 0
user@host:/data /mnt/remote\\040files fuse.sshfs rw 0 0
tmpfs /mnt/shared/tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("folder", "kind"),
    [
        ("/var/lib/idmanager", "ext4"),
        ("/mnt/shared", "nfs4"),
        ("/mnt/shared/ids", "nfs4"),
        ("/mnt/shared/tmp/x", "tmpfs"),
        ("/mnt/sharedother", "ext4"),
        ("/mnt/remote files/db", "fuse.sshfs"),
    ],
)
def test_the_mount_of_a_folder_is_the_longest_mount_point_above_it(folder: str, kind: str) -> None:
    assert mount_type(Path(folder), MOUNTS) == kind


# --- the command, on SQLite files ------------------------------------------------------------


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args])
    return result.exit_code, result.output


def test_doctor_on_a_migrated_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    migrate(url)
    code, output = _doctor("--database-url", url)
    assert code == 0, output
    assert "Every promise holds." in output and "schema: Migrated" in output
    code, output = _doctor("--database-url", url, "--json")
    document = json.loads(output)
    assert code == 0 and document["holds"] is True and document["backend"] == "sqlite"
    assert {c["name"] for c in document["checks"]} == {"file system", "schema", "sequences"}


def test_doctor_finds_sequences_stored_before_ambiguity_was_refused(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    migrate(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:  # as an older IdManager could have stored them
        for prefix, letters in (("COL", 3), ("COLA", 2)):
            connection.execute(
                "INSERT INTO id_managers (scope, prefix, last_value, is_active, separator, "
                "letter_width, digit_width) VALUES ('', ?, 0, 1, '', ?, 4)",
                (prefix, letters),
            )
    code, output = _doctor("--database-url", f"sqlite:///{path}")
    assert code == 1
    assert "COL and COLA both write COLAAA0001" in output and "FAIL" in output


def test_doctor_reads_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    code, output = _doctor("--database-url", f"sqlite:///{path}")
    assert code == 1 and "not migrated" in output
    assert not path.exists()  # a check creates nothing


def test_doctor_refuses_a_bad_url() -> None:
    code, output = _doctor("--database-url", "postgresql://u@h1:x,h2/db")
    assert code == 2 and "host list" in output
