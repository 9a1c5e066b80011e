"""``idmanager import-legacy`` as an operator runs it: a subprocess, its report, its exit code.

The seed's database is a SQLite file built here with the seed's schema (and, for one test, a
PostgreSQL database); the targets are fresh migrated SQLite, PostgreSQL and MariaDB databases.
An unreachable server fails these tests: it never skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import sqlalchemy as sa

import idmanager
from idmanager import IdManager, SyncIdManagerUseCases
from idmanager.infrastructure.database import sync_url
from legacy_seed import SEED_ROWS, create_seed_table

EXIT_ERROR, EXIT_INPUT, EXIT_CONFLICT = 1, 2, 3

REFUSED = [
    "refused BAD: 'BAD-invalidID' — Invalid ID 'BAD-invalidID': expected letters A-Z then "
    "digits after the prefix",
    "refused 'CUS-EU': 'CUS-EU-AAA0001' — Prefix can only contain uppercase letters, numbers, "
    "and underscores",
    "refused OLD: 'OLD-AAA12345' — Invalid ID 'OLD-AAA12345': number 12345 exceeds 9999",
]
REPORT = [
    REFUSED[0],
    "corrected CUS: 'cus-aab12' -> CUS-AAB0012, next CUS-AAB0013",
    REFUSED[1],
    "imported INV -> next INV-AAC0501",
    "corrected INVY: 'invy-aaa0002 ' -> INVY-AAA0002, next INVY-AAA0003 (inactive)",
    REFUSED[2],
    "imported PKG: nothing issued -> next PKG-AAA0001",
    "corrected PUR: 'PUR-AAA001' -> PUR-AAA0001, next PUR-AAA0002",
    "imported REC -> next REC-AAAA0001",
    "corrected SAL: ' SAL-AAB0000 ' -> SAL-AAA9999, next SAL-AAB0001",
    "corrected UOM: 'UOM-AAA0000' -> nothing issued, next UOM-AAA0001",
    "imported VEN -> next VEN-AAA0008 (inactive)",
    "corrected WH: '' -> nothing issued, next WH-AAA0001",
    "skipped _HEALTH_CHECK_: reserved for the health check; a leftover of the seed's, not imported",
]
COUNTS = "4 imported, 6 corrected, 0 reset, 0 unchanged, 3 refused, 1 skipped"


def clean_env() -> dict[str, str]:
    """Return the environment without IdManager settings, so only the test's own apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}


def run_all(*commands: list[str]) -> list[CompletedProcess[str]]:
    """Run ``python -m idmanager`` commands at the same time; return them in order."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "idmanager", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=60)
        results.append(CompletedProcess(args, process.returncode, out, err))
    return results


def idm(*args: str) -> CompletedProcess[str]:
    return run_all(list(args))[0]


def import_legacy(source: str, target: str, *options: str) -> CompletedProcess[str]:
    return idm("import-legacy", "--from", source, "--database-url", target, *options)


def one_line_error(result: CompletedProcess[str], code: int) -> str:
    """Check a failure: the exit code and one ``error:`` line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def seed(url: str, table: str = "id_managers", rows: Any = SEED_ROWS) -> str:
    """Create the seed's table in ``url`` and fill it; return ``url``."""
    engine = sa.create_engine(sync_url(url))
    try:
        create_seed_table(engine, table, rows)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The seed's SQLite database, as its application left it."""
    return seed(f"sqlite:///{tmp_path_factory.mktemp('seed') / 'seed.db'}")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def target(request: pytest.FixtureRequest, databases: Any) -> str:
    """A fresh migrated database of each backend: the seed's prefixes are literal."""
    return str(databases.create(request.param))


def sequences(target: str) -> dict[str, IdManager]:
    """Return the target's sequences of the default scope, read in-process."""
    engine = idmanager.create_engine(target)
    try:
        managers = SyncIdManagerUseCases(engine).run(
            lambda s: s.get_all_prefixes(scope=""), commit=False
        )
    finally:
        engine.dispose()
    return {m.prefix: m for m in managers}


def test_dry_run_fail_skip_then_the_next_ids(seed_file: str, target: str) -> None:
    dry = import_legacy(seed_file, target, "--dry-run", "--on-corrupt", "skip")
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        *REPORT,
        f"14 rows in id_managers: {COUNTS}; dry run, nothing written",
    ]
    assert sequences(target) == {}

    # The default, --on-corrupt fail: the same report, nothing written, exit 2.
    failed = import_legacy(seed_file, target)
    assert failed.stdout.splitlines() == [
        *REPORT,
        f"14 rows in id_managers: {COUNTS}; nothing written",
    ]
    assert one_line_error(failed, EXIT_INPUT) == (
        "error: 3 of 14 rows cannot be imported (refused above); nothing was written. "
        "Correct them in the source, or rerun with --on-corrupt skip to import the others"
    )
    assert sequences(target) == {}

    done = import_legacy(seed_file, target, "--on-corrupt", "skip")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [*REPORT, f"14 rows in id_managers: {COUNTS}; written"]
    imported = sequences(target)
    assert {prefix: m.next_id for prefix, m in imported.items()} == {
        "CUS": "CUS-AAB0013",
        "INV": "INV-AAC0501",
        "INVY": "INVY-AAA0003",
        "PKG": "PKG-AAA0001",
        "PUR": "PUR-AAA0002",
        "REC": "REC-AAAA0001",
        "SAL": "SAL-AAB0001",
        "UOM": "UOM-AAA0001",
        "VEN": "VEN-AAA0008",
        "WH": "WH-AAA0001",
    }
    assert [p for p, m in imported.items() if not m.is_active] == ["INVY", "VEN"]

    # The next IDs, while the import runs again (in fail mode: it writes nothing).
    cus, ven, again = run_all(
        ["next", "CUS", "-n", "2", "--database-url", target],
        ["next", "VEN", "--database-url", target],
        ["import-legacy", "--from", seed_file, "--database-url", target, "--json"],
    )
    assert cus.stdout.split() == ["CUS-AAB0013", "CUS-AAB0014"], cus.stderr
    assert one_line_error(ven, EXIT_CONFLICT) == (
        "error: Prefix VEN is inactive and issues no new IDs"
    )
    report = json.loads(again.stdout)
    assert report["written"] is False
    assert (report["counts"]["unchanged"], report["counts"]["refused"]) == (10, 3)
    assert sequences(target)["CUS"].next_id == "CUS-AAB0015"


def test_rerun_is_all_unchanged_and_json_reports_every_row(seed_file: str, databases: Any) -> None:
    target = databases.create("sqlite")
    first = import_legacy(seed_file, target, "--on-corrupt", "skip", "--json")
    second = import_legacy(seed_file, target, "--on-corrupt", "skip", "--json")
    assert (first.returncode, second.returncode) == (0, 0), (first.stderr, second.stderr)
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert set(one) == {"table", "scope", "on_corrupt", "dry_run", "written", "counts", "rows"}
    assert one["written"] and not one["dry_run"] and one["on_corrupt"] == "skip"
    assert two["counts"] == {
        "imported": 0,
        "corrected": 0,
        "reset": 0,
        "unchanged": 10,
        "refused": 3,
        "skipped": 1,
    }
    cus = next(row for row in one["rows"] if row["prefix"] == "CUS")
    assert cus == {
        "status": "corrected",
        "prefix": "CUS",
        "legacy_prefix": "CUS",
        "legacy_latest_id": "cus-aab12",
        "latest_id": "CUS-AAB0012",
        "next_id": "CUS-AAB0013",
        "is_active": True,
        "reason": None,
    }
    unchanged = next(row for row in two["rows"] if row["prefix"] == "CUS")
    assert unchanged["reason"] == "the target is already at CUS-AAB0012"
    assert [r["next_id"] for r in one["rows"]] == [r["next_id"] for r in two["rows"]]


def test_reset_restarts_unreadable_rows_and_warns_loudly(seed_file: str, databases: Any) -> None:
    target = databases.create("sqlite")
    result = import_legacy(seed_file, target, "--on-corrupt", "reset")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert warnings == [
        "WARNING: BAD restarts at BAD-AAA0001 because its latest ID 'BAD-invalidID' cannot be "
        "read: IDs it issued before may be issued again while they are still in use",
        "WARNING: OLD restarts at OLD-AAA0001 because its latest ID 'OLD-AAA12345' cannot be "
        "read: IDs it issued before may be issued again while they are still in use",
    ]
    assert (
        "reset BAD: 'BAD-invalidID' cannot be read (Invalid ID 'BAD-invalidID': expected "
        "letters A-Z then digits after the prefix); restarted, next BAD-AAA0001"
    ) in result.stdout.splitlines()
    assert REFUSED[1] in result.stdout.splitlines()  # no valid prefix: nothing to restart
    assert idm("next", "BAD", "--database-url", target).stdout == "BAD-AAA0001\n"


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
    scoped, default = run_all(
        ["next", "CUS", "--scope", "acme", "--database-url", target],
        ["next", "CUS", "--database-url", target],
    )
    assert (scoped.stdout, default.stdout) == ("CUS-AAB0013\n", "CUS-AAA0001\n")


def test_errors_are_one_line_with_the_exit_code_of_their_kind(
    seed_file: str, databases: Any, tmp_path: Path
) -> None:
    target = databases.create("sqlite")
    unmigrated = databases.create("sqlite", migrate=False)
    missing = tmp_path / "nowhere.db"
    cases: list[tuple[list[str], int, str]] = [
        (["--from", "nonsense://x"], EXIT_INPUT, "error: invalid --from database URL"),
        (
            ["--from", f"sqlite:///{missing}"],
            EXIT_INPUT,
            f"error: The seed's SQLite database {missing} does not exist",
        ),
        (
            ["--from", seed_file, "--table", "nope"],
            EXIT_INPUT,
            "error: Cannot read the seed's table 'nope'",
        ),
        (["--from", target], EXIT_INPUT, "error: Cannot read the seed's table 'id_managers'"),
        (
            ["--from", "postgresql://nobody@127.0.0.1:1/seed"],
            EXIT_ERROR,
            "error: Source database unavailable",
        ),
    ]
    results = run_all(
        *(["import-legacy", *args, "--database-url", target] for args, _, _ in cases),
        ["import-legacy", "--from", seed_file, "--database-url", unmigrated],
        ["import-legacy", "--database-url", target],
        ["import-legacy", "--from", seed_file, "--database-url", target, "--dry-run"],
    )
    for (args, code, start), result in zip(cases, results, strict=False):
        assert one_line_error(result, code).startswith(start), (args, result.stderr)
        assert result.stdout == ""
    not_migrated, no_source, dry_fail = results[len(cases) :]
    assert "run `idmanager migrate` first" in one_line_error(not_migrated, EXIT_ERROR)
    assert no_source.returncode == EXIT_INPUT and "--from" in no_source.stderr
    # A dry run in fail mode predicts the failure, with the same exit code.
    assert "; a real run would write nothing. " in one_line_error(dry_fail, EXIT_INPUT)
    assert dry_fail.stdout.splitlines()[:-1] == REPORT
    assert not missing.exists()  # a misspelt seed file is not created
