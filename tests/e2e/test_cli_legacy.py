"""``idmanager import-legacy`` as an operator runs it: a process, a seed on a real server.

Every report line, mode, option and error of the command is tested in-process in
``tests/unit/test_cli.py`` (over a SQLite seed file), and the import itself on every backend
in ``tests/integration/test_legacy_import.py``. Here the seed's database is a real
PostgreSQL or MariaDB server, read by the installed command across the network, and the
operator carries on with the imported sequences. An unreachable server fails these tests: it
never skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from subprocess import CompletedProcess
from typing import Any

import sqlalchemy as sa

from idmanager.infrastructure.database import sync_url
from legacy_seed import SEED_ROWS, create_seed_table

COUNTS = "4 imported, 6 corrected, 0 reset, 0 unchanged, 3 refused, 1 skipped"


def idm(*args: str) -> CompletedProcess[str]:
    """Run ``python -m idmanager ARGS`` with no IdManager setting from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "idmanager", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")},
        timeout=60,
    )


def seed(url: str, table: str = "id_managers", rows: Any = SEED_ROWS) -> str:
    """Create the seed's table in ``url`` and fill it; return ``url``."""
    engine = sa.create_engine(sync_url(url))
    try:
        create_seed_table(engine, table, rows)
    finally:
        engine.dispose()
    return url


def test_a_mariadb_seed_into_postgresql_then_the_next_ids(databases: Any) -> None:
    source = seed(databases.create("mariadb", migrate=False))
    target = databases.create("postgresql")
    base = ["import-legacy", "--from", source, "--database-url", target]

    # The default mode refuses the seed's unreadable rows and writes nothing at all.
    refused = idm(*base)
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout.splitlines()[-1] == f"14 rows in id_managers: {COUNTS}; nothing written"
    assert refused.stderr.startswith("error: 3 of 14 rows cannot be imported (refused above)")
    assert idm("list", "--json", "--database-url", target).stdout == "[]\n"

    done = idm(*base, "--on-corrupt", "skip", "--actor", "ops")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    lines = done.stdout.splitlines()
    assert "corrected CUS: 'cus-aab12' -> CUS-AAB0012, next CUS-AAB0013" in lines
    assert "imported VEN -> next VEN-AAA0008 (inactive)" in lines
    assert lines[-1] == f"14 rows in id_managers: {COUNTS}; written"

    assert idm("next", "CUS", "-n", "2", "--database-url", target).stdout == (
        "CUS-AAB0013\nCUS-AAB0014\n"
    )
    inactive = idm("next", "VEN", "--database-url", target)
    assert (inactive.returncode, inactive.stderr) == (
        3,
        "error: Prefix VEN is inactive and issues no new IDs\n",
    )
    trail = json.loads(
        idm("audit", "--json", "--action", "import", "--database-url", target).stdout
    )
    assert {item["actor"] for item in trail["items"]} == {"ops"}
    assert len(trail["items"]) == 10

    # Again: every readable row is now unchanged (and CUS has moved on past its legacy ID).
    again = json.loads(idm(*base, "--on-corrupt", "skip", "--json").stdout)
    assert (again["counts"]["unchanged"], again["counts"]["refused"]) == (10, 3)


def test_a_postgresql_seed_into_a_scope_of_a_sqlite_target(databases: Any) -> None:
    rows = [("CUS", "CUS-AAB0012", True), ("PUR", "PUR-AAA001", True)]
    source = seed(databases.create("postgresql", migrate=False), "seed_ids", rows)
    target = databases.create("sqlite")
    result = idm(
        "import-legacy",
        "--from",
        source,
        "--table",
        "seed_ids",
        "--scope",
        "acme",
        "--database-url",
        target,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported CUS -> next CUS-AAB0013",
        "corrected PUR: 'PUR-AAA001' -> PUR-AAA0001, next PUR-AAA0002",
        "2 rows in seed_ids: 1 imported, 1 corrected, 0 reset, 0 unchanged, 0 refused, "
        "0 skipped; written",
    ]
    assert idm("next", "CUS", "--scope", "acme", "--database-url", target).stdout == (
        "CUS-AAB0013\n"
    )
    assert idm("next", "CUS", "--database-url", target).stdout == "CUS-AAA0001\n"
