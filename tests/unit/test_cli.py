"""The command line in-process: every command and option over the in-memory fake.

Each test runs ``idmanager`` through Typer's runner, as the shell would (parsing, output,
exit code), with its storage a :class:`FakeBackend`. The subprocess journeys against real
databases are in ``tests/e2e/test_cli.py``.
"""

from __future__ import annotations

import copy
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer.main
import typer.testing
from typer.testing import CliRunner, Result

from idmanager.application import legacy
from idmanager.application.results import HealthReport, ResetResult, SequenceStats, to_json
from idmanager.cli import app
from idmanager.cli.base import PROGRESS_THRESHOLD, default_actor
from idmanager.domain.errors import (
    BusyError,
    ConflictError,
    FormatLockedError,
    IdManagerError,
    InvalidCountError,
    InvalidInputError,
    PrefixInactiveError,
    PrefixNotFoundError,
    StorageError,
    TransactionConflictError,
)
from idmanager.domain.format import format_id
from idmanager.domain.repository import AuditAction, AuditEntry
from idmanager.infrastructure import legacy_source
from idmanager.infrastructure.database import DEFAULT_DATABASE_URL
from idmanager.problems import EXIT_ACCESS, EXIT_OK, KINDS, kind_of
from idmanager.settings import MIN_KEY_LENGTH
from legacy_seed import SEED_ROWS, create_seed_table

from .cli_backend import FakeBackend

COMMANDS = [
    "next",
    "reset",
    "list",
    "show",
    "activate",
    "deactivate",
    "health",
    "migrate",
    "audit",
    "import-legacy",
    "serve",
]
CHANGING = ["next", "reset", "activate", "deactivate", "import-legacy"]


def clean_env(**extra: str | None) -> dict[str, str | None]:
    """Unset every IdManager setting (and terminal hints) for one run; the runner restores them.

    ``serve`` writes IDMANAGER_HOST, _PORT, _DATABASE_URL and _MIGRATE_ON_START into the
    environment: naming them here makes the runner put them back afterwards.
    """
    names = [k for k in os.environ if k.startswith("IDMANAGER_")]
    names += [f"IDMANAGER_{name}" for name in ("HOST", "PORT", "DATABASE_URL", "ACTOR")]
    names += ["IDMANAGER_MIGRATE_ON_START", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"]
    env: dict[str, str | None] = dict.fromkeys(names)
    env["COLUMNS"] = "200"  # tables and help on one line per row
    env.update(extra)
    return env


def idm(backend: FakeBackend | None, *args: str, **env: str | None) -> Result:
    """Run ``idmanager ARGS`` in-process over ``backend`` (None: the real SQL backend)."""
    return CliRunner().invoke(
        app,
        list(args),
        obj=backend,
        env=clean_env(**env),
        catch_exceptions=False,
        prog_name="idmanager",
    )


COMMAND = typer.main.get_command(app)


@pytest.fixture(autouse=True)
def command_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the Click command of ``idmanager`` once: Typer's runner builds it again for
    every invocation, which takes longer than running most commands."""
    monkeypatch.setattr(typer.testing, "_get_command", lambda _: COMMAND)


def ok(backend: FakeBackend | None, *args: str, **env: str | None) -> str:
    """Run a command that must succeed quietly; return its stdout (None: the SQL backend)."""
    result = idm(backend, *args, **env)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def failed(result: Result, code: int) -> str:
    """Check a failure: the exit code, one ``error:`` line on stderr, nothing on stdout."""
    assert (result.exit_code, result.stdout) == (code, ""), (result.exit_code, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    return result.stderr.rstrip("\n")


def rows(text: str) -> list[list[str]]:
    """Split a table's lines into cells, separated by two or more spaces (an empty first
    cell, such as the default scope, is dropped)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def stats(backend: FakeBackend, prefix: str, scope: str = "") -> SequenceStats:
    """Return what the fake holds for a sequence, as the typed result."""
    return SequenceStats.of(backend.repository.rows[scope, prefix])


# -- help ------------------------------------------------------------------------------------


def test_help_lists_every_command_and_the_exit_codes_of_the_registry(backend: FakeBackend) -> None:
    out = ok(backend, "--help")
    for command in COMMANDS:
        assert f" {command} " in out, command
    flat = " ".join(out.split())
    for meaning in [
        "Exit codes: 0 success;",
        "; 1 database unavailable",
        "; 2 invalid prefix",
        "; 3 prefix inactive",
        "; 4 prefix not found;",
        "; 5 sequence busy",
    ]:
        assert meaning in flat
    for kind in KINDS:
        if kind.error is not None and kind.exit_code != EXIT_ACCESS:
            assert kind.title.lower() in flat, kind.kind
    # Access is the HTTP service's matter: no command ends that way, and none says it may.
    assert f"; {EXIT_ACCESS} " not in flat
    assert backend.urls == [] and backend.migrated == [], "--help must not touch storage"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_explains_its_options_and_exit_codes(
    backend: FakeBackend, command: str
) -> None:
    out = ok(backend, command, "--help")
    flat = " ".join(out.split())
    assert "Exit codes: 0 success; 1 database unavailable" in flat
    assert "5 sequence busy" in flat
    assert "--database-url" in out and "IDMANAGER_DATABASE_URL" in out
    if command != "serve":
        assert "--json" in out
    if command in CHANGING:
        assert "--actor" in out and "IDMANAGER_ACTOR" in out
    assert backend.urls == []


def test_help_of_the_options_users_look_for(backend: FakeBackend) -> None:
    assert "--count" in ok(backend, "next", "--help")
    listing = ok(backend, "list", "--help")
    assert all(option in listing for option in ("--search", "--template", "--active-only"))
    audit = ok(backend, "audit", "--help")
    for option in ("--scope", "--prefix", "--actor", "--action", "--since", "--until"):
        assert option in audit
    assert "--before" in audit and "--limit" in audit and "create|register|" in audit
    serve = ok(backend, "serve", "--help")
    assert "--workers" in serve and "loopback" in serve


def test_version(backend: FakeBackend) -> None:
    assert ok(backend, "--version").startswith("idmanager ")


# -- next ------------------------------------------------------------------------------------


def test_next_prints_consecutive_committed_ids_one_per_line(backend: FakeBackend) -> None:
    assert ok(backend, "next", "NXT") == "NXT-AAA0001\n"
    assert ok(backend, "next", " nxt ") == "NXT-AAA0002\n"
    assert ok(backend, "next", "NXT", "-n", "3") == "NXT-AAA0003\nNXT-AAA0004\nNXT-AAA0005\n"
    out = ok(backend, "next", "NXT", "--count", "2", "--json")
    assert out.count("\n") == 1
    assert json.loads(out) == {
        "prefix": "NXT",
        "scope": "",
        "count": 2,
        "ids": ["NXT-AAA0006", "NXT-AAA0007"],
    }
    assert backend.repository.rows["", "NXT"].last_value == 7  # committed
    assert backend.transactions.rollbacks == 0


def test_next_in_a_scope_and_from_a_template(backend: FakeBackend) -> None:
    assert ok(backend, "next", "SCP", "--scope", "acme") == "SCP-AAA0001\n"
    assert ok(backend, "next", "SCP", "--scope", "acme") == "SCP-AAA0002\n"
    assert ok(backend, "next", "SCP") == "SCP-AAA0001\n"
    assert json.loads(ok(backend, "next", "SCP", "--scope", "acme", "--json"))["scope"] == "acme"

    assert ok(backend, "next", "PER{YYYY}", "--date", "2026-12-31") == "PER2026-AAA0001\n"
    assert ok(backend, "next", "PER{YYYY}", "--date", "2027-01-01") == "PER2027-AAA0001\n"
    assert ok(backend, "next", "per{yyyy}", "--date", "2026-06-30") == "PER2026-AAA0002\n"
    document = json.loads(ok(backend, "next", "PER{YYYY}", "--date", "2027-03-01", "--json"))
    assert (document["prefix"], document["ids"]) == ("PER2027", ["PER2027-AAA0002"])


def test_next_refuses_bad_input_with_exit_2(backend: FakeBackend) -> None:
    assert failed(idm(backend, "next", "BAD-PREFIX!"), 2) == (
        "error: Prefix can only contain uppercase letters, numbers, and underscores"
    )
    assert failed(idm(backend, "next", "CNT", "-n", "0"), 2) == (
        "error: Count must be greater than 0"
    )
    assert "Unknown date token {XX}" in failed(idm(backend, "next", "PER{XX}"), 2)
    assert failed(idm(backend, "next", "SCP", "--scope", "a b"), 2).startswith(
        "error: Scope can only contain"
    )
    usage = idm(backend, "next", "CNT", "-n", "many")  # Click's own usage error
    assert (usage.exit_code, usage.stdout) == (2, "")
    assert backend.repository.rows == {}


def test_a_large_bulk_streams_only_the_ids(backend: FakeBackend) -> None:
    count = PROGRESS_THRESHOLD + 50_000
    lines = ok(backend, "next", "BLK", "-n", str(count)).splitlines()
    assert len(lines) == count
    assert (lines[0], lines[9_999], lines[-1]) == (
        "BLK-AAA0001",
        "BLK-AAB0001",
        format_id("BLK", count),
    )
    document = json.loads(ok(backend, "next", "BLK", "-n", str(count), "--json"))
    assert document["count"] == len(document["ids"]) == count
    assert document["ids"][0] == format_id("BLK", count + 1)
    assert document["ids"][-1] == format_id("BLK", 2 * count)


def test_the_progress_bar_shows_on_a_terminal_stderr_for_large_bulks_only(
    backend: FakeBackend,
) -> None:
    # FORCE_COLOR makes Rich treat stderr as a terminal; stdout stays a pipe.
    count = PROGRESS_THRESHOLD
    bar = idm(backend, "next", "PGB", "-n", str(count), FORCE_COLOR="1")
    assert bar.exit_code == 0, bar.stderr
    assert "printing IDs" in bar.stderr
    lines = bar.stdout.splitlines()
    assert len(lines) == count and lines[-1] == format_id("PGB", count)
    assert "\x1b" not in bar.stdout
    small = idm(backend, "next", "PGB", "-n", str(count - 1), FORCE_COLOR="1")
    assert (small.exit_code, small.stderr) == (0, "")


def test_closed_output_says_which_ids_were_allocated(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A pipe whose reader is gone, as after `| head`: the first write raises BrokenPipeError.
    # Typer's runner replaces stdout with a buffer, so the command runs directly here.
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    for name in ("IDMANAGER_ACTOR", "IDMANAGER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    try:
        with pytest.raises(SystemExit) as exited:
            app(["next", "HED", "-n", "300000"], prog_name="idmanager", obj=backend)
    finally:
        stdout.close()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: output closed before every ID was printed; HED-AAA0001 to HED-ABE0030 "
        "(300,000 IDs) were allocated\n"
    )
    assert backend.repository.rows["", "HED"].last_value == 300_000


FULL = Path("/dev/full")  # Linux's: every write fails with ENOSPC, as on a full disk


def on_a_full_disk(
    backend: FakeBackend,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[object, str]:
    """Run ``idmanager ARGS`` with stdout on a full disk; return its exit code and stderr.

    Typer's runner replaces stdout with a buffer, so the command runs directly here.
    """
    stdout = FULL.open("w")
    monkeypatch.setattr(sys, "stdout", stdout)
    for name in ("IDMANAGER_ACTOR", "IDMANAGER_DATABASE_URL", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    try:
        with pytest.raises(SystemExit) as exited:
            app(list(args), prog_name="idmanager", obj=backend)
    finally:
        stdout.close()  # what the failed write left buffered must not fail again
    return exited.value.code, capsys.readouterr().err


def test_a_full_disk_says_which_ids_were_allocated(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failure = "error: could not write the output (No space left on device) before every ID "
    assert on_a_full_disk(backend, monkeypatch, capsys, "next", "DF", "-n", "5") == (
        1,
        failure + "was printed; DF-AAA0001 to DF-AAA0005 (5 IDs) were allocated\n",
    )
    assert on_a_full_disk(backend, monkeypatch, capsys, "next", "DF", "--json") == (
        1,
        failure + "was printed; DF-AAA0006 to DF-AAA0006 (1 IDs) were allocated\n",
    )
    assert backend.repository.rows["", "DF"].last_value == 6


def test_a_full_disk_is_one_error_line_for_tables_and_json(
    backend: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ok(backend, "next", "DF", "-n", "3")
    failure = "error: could not write the output (No space left on device)"
    for args in (
        ["list"],
        ["list", "--json"],
        ["list", "--search", "nothing"],
        ["show", "DF"],
        ["show", "DF", "--json"],
        ["audit"],
        ["audit", "--json"],
        ["health"],
        ["health", "--json"],
        ["migrate"],
    ):
        assert on_a_full_disk(backend, monkeypatch, capsys, *args) == (1, failure + "\n"), args
    # What a change did is said, since it was committed all the same.
    assert on_a_full_disk(
        backend, monkeypatch, capsys, "reset", "DF", "--to", "DF-AAA0009", "--json"
    ) == (1, failure + "; the reset of DF was made\n")
    assert on_a_full_disk(backend, monkeypatch, capsys, "deactivate", "DF", "--scope", "") == (
        1,
        failure + "; DF was deactivated\n",
    )
    assert on_a_full_disk(backend, monkeypatch, capsys, "activate", "DF", "--json") == (
        1,
        failure + "; DF was activated\n",
    )
    assert on_a_full_disk(
        backend, monkeypatch, capsys, "reset", "DF", "--to", "DF-AAA0010", "--dry-run"
    ) == (1, failure + "\n")
    assert stats(backend, "DF").latest_id == "DF-AAA0009"


# -- reset -----------------------------------------------------------------------------------


def test_reset_forward_then_backwards_refused_until_forced(backend: FakeBackend) -> None:
    ok(backend, "next", "RST", "-n", "5")
    assert ok(backend, "reset", "RST", "--to", "RST-AAA0010") == (
        "reset RST: latest ID RST-AAA0005 -> RST-AAA0010, next ID RST-AAA0011\n"
    )
    assert ok(backend, "next", "RST") == "RST-AAA0011\n"
    assert failed(idm(backend, "reset", "RST", "--to", "RST-AAA0003"), 3) == (
        "error: Resetting RST to RST-AAA0003 would move it backwards from RST-AAA0011 "
        "and issue IDs again; pass --force to do it anyway"
    )
    assert ok(backend, "reset", "RST", "--to", "rst-aaa3 ", "--force") == (
        "reset RST (forced): latest ID RST-AAA0011 -> RST-AAA0003, next ID RST-AAA0004\n"
    )
    assert ok(backend, "next", "RST") == "RST-AAA0004\n"
    resets = [e for e in backend.repository.entries() if e.action is AuditAction.RESET]
    assert [(e.old_value, e.new_value, e.detail) for e in resets] == [
        (5, 10, None),
        (11, 3, "forced"),
    ]


def test_reset_json_is_the_reset_result(backend: FakeBackend) -> None:
    ok(backend, "next", "RST", "-n", "11")
    document = json.loads(ok(backend, "reset", "RST", "--to", "rst-aaa2", "--force", "--json"))
    expected = ResetResult("RST", "", "RST-AAA0011", "RST-AAA0002", "RST-AAA0003", True, False)
    assert document == to_json(expected)


def test_reset_dry_run_shows_the_outcome_and_changes_nothing(backend: FakeBackend) -> None:
    ok(backend, "next", "DRY", "-n", "5")
    before, audited = backend.repository.snapshot(), len(backend.repository.audit)
    assert ok(backend, "reset", "DRY", "--to", "DRY-AAA0100", "--dry-run") == (
        "dry run, nothing changed: DRY would go from latest ID DRY-AAA0005 -> DRY-AAA0100, "
        "next ID DRY-AAA0101\n"
    )
    document = json.loads(
        ok(backend, "reset", "DRY", "--to", "DRY-AAA0002", "--force", "--dry-run", "--json")
    )
    assert document == to_json(
        ResetResult("DRY", "", "DRY-AAA0005", "DRY-AAA0002", "DRY-AAA0003", True, True)
    )
    # Refused without --force, dry run or not.
    failed(idm(backend, "reset", "DRY", "--to", "DRY-AAA0002", "--dry-run"), 3)
    assert backend.repository.snapshot() == before
    assert len(backend.repository.audit) == audited


def test_reset_without_to_starts_over_and_names_the_scope(backend: FakeBackend) -> None:
    ok(backend, "next", "ZER", "--scope", "acme", "-n", "3")
    assert ok(backend, "reset", "ZER", "--scope", "acme", "--force") == (
        "reset ZER (scope 'acme') (forced): latest ID ZER-AAA0003 -> (none), next ID ZER-AAA0001\n"
    )
    assert ok(backend, "next", "ZER", "--scope", "acme") == "ZER-AAA0001\n"


def test_reset_refuses_an_unreadable_or_foreign_id_with_exit_2(backend: FakeBackend) -> None:
    assert "CNT-AAA!" in failed(idm(backend, "reset", "CNT", "--to", "CNT-AAA!"), 2)
    assert failed(idm(backend, "reset", "RSO", "--to", "CUS-AAA0001"), 2) == (
        "error: Reset ID must start with 'RSO-'"
    )
    assert backend.repository.rows == {}


# -- list and show ---------------------------------------------------------------------------


def test_list_without_sequences_says_how_to_create_one(backend: FakeBackend) -> None:
    assert ok(backend, "list") == "no prefixes yet: `idmanager next PREFIX` creates one\n"
    assert ok(backend, "list", "--json") == "[]\n"


def test_list_says_no_prefix_matches_when_its_filters_leave_none(backend: FakeBackend) -> None:
    filters = [
        ["--search", "VEN"],
        ["--scope", "acme"],
        ["--active-only"],
        ["--template", "INV{YYYY}"],
        ["--skip", "1"],
        ["--limit", "0"],
    ]
    for options in filters:  # nothing stored yet: the filters, not the database, say so
        assert ok(backend, "list", *options) == "no prefixes match\n", options
    ok(backend, "next", "CUS")
    ok(backend, "deactivate", "CUS")
    for options in filters:
        assert ok(backend, "list", *options) == "no prefixes match\n", options


def test_list_table_shows_the_scope_column_only_when_needed(backend: FakeBackend) -> None:
    ok(backend, "next", "CUS", "-n", "100")
    ok(backend, "next", "VEN", "-n", "12000")
    ok(backend, "next", "CUS", "--scope", "acme")
    table = rows(ok(backend, "list"))
    assert table[0] == [
        "Scope",
        "Prefix",
        "Latest ID",
        "Next ID",
        "Issued",
        "Active",
        "Updated (UTC)",
    ]
    assert [row[:5] for row in table[1:]] == [
        ["CUS", "CUS-AAA0100", "CUS-AAA0101", "100", "yes"],
        ["VEN", "VEN-AAB2001", "VEN-AAB2002", "12,000", "yes"],
        ["acme", "CUS", "CUS-AAA0001", "CUS-AAA0002", "1"],
    ]
    default_scope = rows(ok(backend, "list", "--scope", ""))
    assert default_scope[0][0] == "Prefix"
    assert [row[0] for row in default_scope[1:]] == ["CUS", "VEN"]


LONG_PREFIX = "A_RATHER_LONG_PREFIX_FOR_" + "X" * 40
LONG_SCOPE = "a-rather-long-tenant-name.example:eu-west-1"


def test_a_redirected_list_has_whole_rows_however_wide(backend: FakeBackend) -> None:
    ok(backend, "next", LONG_PREFIX, "--scope", LONG_SCOPE, "-n", "2")
    ok(backend, "next", "CUS")
    # A pipe or a file, with no COLUMNS: Rich alone would cut the rows at 80 columns.
    text = ok(backend, "list", COLUMNS=None)
    assert "…" not in text
    assert [row[:5] for row in rows(text)[1:]] == [
        ["CUS", "CUS-AAA0001", "CUS-AAA0002", "1", "yes"],
        [LONG_SCOPE, LONG_PREFIX, format_id(LONG_PREFIX, 2), format_id(LONG_PREFIX, 3), "2"],
    ]
    audit = ok(backend, "audit", COLUMNS=None)
    assert f"{LONG_SCOPE}/{LONG_PREFIX}" in audit
    assert f"first ID {format_id(LONG_PREFIX, 1)} (separator '-'" in audit


def test_a_narrow_terminal_wraps_long_names_and_ids_rather_than_cutting_them(
    backend: FakeBackend,
) -> None:
    ok(backend, "next", LONG_PREFIX, "--scope", LONG_SCOPE, "-n", "2")
    ok(backend, "next", "CUS")
    lines = ok(backend, "list", COLUMNS="90").splitlines()
    assert "…" not in "".join(lines)
    assert max(len(line) for line in lines) <= 90
    header, body = lines[0], lines[1:]
    starts = [header.index(name) for name in ("Scope", "Prefix", "Latest ID", "Next ID")]
    starts.append(header.index("Issued"))

    def column(number: int) -> str:
        """Return a column's cells, read down the lines and joined: what it shows whole."""
        start, end = starts[number], starts[number + 1]
        return "".join(line[start:end].strip() for line in body)

    assert [column(number) for number in range(4)] == [
        LONG_SCOPE,
        "CUS" + LONG_PREFIX,
        "CUS-AAA0001" + format_id(LONG_PREFIX, 2),
        "CUS-AAA0002" + format_id(LONG_PREFIX, 3),
    ]


def test_list_json_is_the_statistics_of_each_sequence(backend: FakeBackend) -> None:
    ok(backend, "next", "LST", "-n", "3")
    ok(backend, "next", "ABC", "--scope", "acme")
    document = json.loads(ok(backend, "list", "--json"))
    assert document == to_json([stats(backend, "LST"), stats(backend, "ABC", "acme")])
    assert [(item["scope"], item["prefix"], item["latest_id"]) for item in document] == [
        ("", "LST", "LST-AAA0003"),
        ("acme", "ABC", "ABC-AAA0001"),
    ]


def test_list_filters_search_template_and_pages(backend: FakeBackend) -> None:
    for prefix in ("CUS", "CUSTOM", "VEN"):
        ok(backend, "next", prefix)
    ok(backend, "next", "INV{YYYY}", "--date", "2026-05-01")
    ok(backend, "next", "INV{YYYY}", "--date", "2027-05-01")
    ok(backend, "next", "INV2025")  # a literal prefix, not a period of the template
    ok(backend, "deactivate", "VEN")

    def listed(*options: str) -> list[str]:
        return [item["prefix"] for item in json.loads(ok(backend, "list", "--json", *options))]

    assert listed() == ["CUS", "CUSTOM", "INV2025", "INV2026", "INV2027", "VEN"]
    assert listed("--active-only") == ["CUS", "CUSTOM", "INV2025", "INV2026", "INV2027"]
    assert listed("--search", "us") == ["CUS", "CUSTOM"]
    assert listed("--template", "inv{yyyy}") == ["INV2026", "INV2027"]
    assert listed("--skip", "1", "--limit", "2") == ["CUSTOM", "INV2025"]
    assert listed("--scope", "acme") == []
    assert [row[0] for row in rows(ok(backend, "list", "--template", "INV{YYYY}"))[1:]] == [
        "INV2026",
        "INV2027",
    ]
    assert failed(idm(backend, "list", "--limit", "-1"), 2).startswith(
        "error: skip and limit must be between 0 and"
    )


def test_show_prints_the_statistics_of_one_sequence(backend: FakeBackend) -> None:
    ok(backend, "next", "LST", "-n", "3", "--actor", "alice")
    shown = {row[0]: row[1] for row in rows(ok(backend, "show", "lst"))}
    assert list(shown) == [
        "Prefix",
        "Scope",
        "Latest ID",
        "Next ID",
        "Issued",
        "Active",
        "Format",
        "Letter width used",
        "Template",
        "Created",
        "Updated",
    ]
    assert shown["Latest ID"] == "LST-AAA0003" and shown["Next ID"] == "LST-AAA0004"
    assert (shown["Scope"], shown["Issued"], shown["Active"]) == ("(default)", "3", "yes")
    assert shown["Format"] == "separator '-', 3 letters, 4 digits"
    assert shown["Created"].endswith(" by alice")
    assert json.loads(ok(backend, "show", "LST", "--json")) == to_json(stats(backend, "LST"))


def test_show_of_a_period_resolves_the_template_from_the_date(backend: FakeBackend) -> None:
    ok(backend, "next", "PER{YYYY}", "--date", "2026-12-31", "-n", "2")
    shown = json.loads(ok(backend, "show", "PER{YYYY}", "--date", "2026-01-01", "--json"))
    assert (shown["prefix"], shown["latest_id"], shown["template"]) == (
        "PER2026",
        "PER2026-AAA0002",
        "PER{YYYY}",
    )


def test_show_of_an_unknown_prefix_exits_4(backend: FakeBackend) -> None:
    assert failed(idm(backend, "show", "NONE"), 4) == (
        "error: Prefix NONE does not exist; its first ID would be NONE-AAA0001"
    )
    assert failed(idm(backend, "show", "NONE", "--scope", "acme", "--json"), 4) == (
        "error: Prefix NONE (scope 'acme') does not exist; its first ID would be NONE-AAA0001"
    )


# -- activate and deactivate -----------------------------------------------------------------


def test_a_deactivated_prefix_refuses_ids_until_activated(backend: FakeBackend) -> None:
    ok(backend, "next", "DEA")
    assert ok(backend, "deactivate", "dea") == (
        "DEA is inactive: it issues no new IDs until `idmanager activate DEA`\n"
    )
    assert failed(idm(backend, "next", "DEA"), 3) == (
        "error: Prefix DEA is inactive and issues no new IDs"
    )
    assert json.loads(ok(backend, "show", "DEA", "--json"))["is_active"] is False
    assert ok(backend, "activate", "DEA") == "DEA is active: next ID DEA-AAA0002\n"
    assert ok(backend, "next", "DEA") == "DEA-AAA0002\n"


def test_activate_and_deactivate_json_and_scope(backend: FakeBackend) -> None:
    ok(backend, "next", "DEA", "--scope", "acme")
    document = json.loads(ok(backend, "deactivate", "DEA", "--scope", "acme", "--json"))
    # The statistics of the sequence as changed, read back after the change.
    assert document == to_json(stats(backend, "DEA", "acme"))
    assert document["is_active"] is False
    assert ok(backend, "activate", "DEA", "--scope", "acme") == (
        "DEA (scope 'acme') is active: next ID DEA-AAA0002\n"
    )
    assert json.loads(ok(backend, "activate", "DEA", "--scope", "acme", "--json"))["is_active"]


def test_activate_or_deactivate_an_unknown_prefix_exits_4(backend: FakeBackend) -> None:
    for command in ("activate", "deactivate"):
        assert failed(idm(backend, command, "NOPE"), 4) == "error: Prefix NOPE does not exist"
    assert backend.repository.rows == {}


# -- health and migrate ----------------------------------------------------------------------


def test_health_reports_a_healthy_storage(backend: FakeBackend) -> None:
    ok(backend, "next", "ONE")
    assert ok(backend, "health") == (
        "healthy: ID Manager service is operational (1 prefix, test ID _HEALTH_CHECK_-AAA0001)\n"
    )
    document = json.loads(ok(backend, "health", "--json"))
    expected = HealthReport(
        "healthy",
        "ID Manager service is operational",
        document["timestamp"],
        prefix_count=1,
        test_id_generated="_HEALTH_CHECK_-AAA0001",
    )
    assert document == to_json(expected)


def test_health_of_a_failing_storage_exits_1_with_the_reason(backend: FakeBackend) -> None:
    backend.repository.fail = StorageError("Database unavailable:\n  connection refused")
    down = idm(backend, "health")
    assert (down.exit_code, down.stdout) == (1, "")
    assert down.stderr == (
        "unhealthy: ID Manager service error: Database unavailable: connection refused\n"
    )
    report = idm(backend, "health", "--json")
    assert report.exit_code == 1
    document = json.loads(report.stdout)
    assert document == to_json(
        HealthReport(
            "unhealthy",
            "ID Manager service error: Database unavailable:\n  connection refused",
            document["timestamp"],
            error_type="StorageError",
        )
    )


def test_migrate_migrates_the_database_it_is_given(backend: FakeBackend) -> None:
    assert (
        ok(backend, "migrate", "--database-url", "sqlite:///one.db") == "database is up to date\n"
    )
    assert json.loads(ok(backend, "migrate", "--json")) == {"status": "up to date"}
    assert backend.migrated == ["sqlite:///one.db", DEFAULT_DATABASE_URL]


# -- errors and exit codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInputError("skip and limit must be between 0 and 10"), 2),
        (InvalidCountError("Count must be greater than 0"), 2),
        (ConflictError("Prefix CUS cannot issue 10 more IDs"), 3),
        (PrefixInactiveError("Prefix CUS is inactive and issues no new IDs"), 3),
        (FormatLockedError("Prefix CUS has issued IDs; its format can no longer change"), 3),
        (PrefixNotFoundError("Prefix CUS does not exist"), 4),
        (BusyError("The sequence is busy: another transaction holds it"), 5),
        (TransactionConflictError("The transaction conflicted with another; try again"), 5),
        (StorageError("Database unavailable: connection refused"), 1),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_each_kind_of_error_exits_with_its_code_from_the_registry(
    backend: FakeBackend, error: IdManagerError, code: int
) -> None:
    assert kind_of(error).exit_code == code
    backend.repository.fail = error
    for args in (
        ["next", "CUS"],
        ["reset", "CUS", "--to", "CUS-AAA0002"],
        ["list"],
        ["show", "CUS"],
        ["activate", "CUS"],
        ["deactivate", "CUS", "--json"],
        ["audit"],
        ["migrate"],
    ):
        assert failed(idm(backend, *args), code) == f"error: {error}", args


CLI_DOC = Path(__file__).parents[2] / "docs" / "cli.md"


def test_the_documented_exit_codes_are_those_of_the_registry() -> None:
    documented = dict(re.findall(r"^\| (\d) \| (.*) \|$", CLI_DOC.read_text(), re.MULTILINE))
    # Access refusals (API keys) belong to the HTTP service: the command line never has them.
    produced = {kind.exit_code for kind in KINDS if kind.error is not None} - {EXIT_ACCESS}
    assert {int(code) for code in documented} == {EXIT_OK} | produced
    # Each code's row names every kind of error that ends with it, as `--help` does.
    for kind in KINDS:
        if kind.error is not None and kind.exit_code != EXIT_ACCESS:
            assert kind.title.lower() in documented[str(kind.exit_code)].lower(), kind.kind
    assert "database not migrated" in documented["1"].lower()


def test_the_documented_api_keys_are_long_enough_to_be_accepted() -> None:
    # Shown where serve refuses a public host without keys, and in its examples.
    hint = failed(idm(FakeBackend(), "serve", "--host", "0.0.0.0"), 2)
    examples = re.findall(r"IDMANAGER_API_KEYS='([^']+)'", CLI_DOC.read_text())
    examples += re.findall(r"\(e\.g\. '([^']+)'\)", CLI_DOC.read_text() + hint)
    assert len(examples) >= 3
    for example in examples:
        for pair in example.split(","):
            key, _, role = pair.partition(":")
            assert len(key) >= MIN_KEY_LENGTH and role in ("read", "generate", "admin"), pair


def test_an_error_spread_over_lines_is_one_line(backend: FakeBackend) -> None:
    backend.repository.fail = StorageError(
        "Database unavailable (sqlite:///x.db):\n  (OperationalError) no such table\n"
    )
    assert failed(idm(backend, "next", "CUS"), 1) == (
        "error: Database unavailable (sqlite:///x.db): (OperationalError) no such table"
    )


def test_a_usage_error_is_exit_2_with_nothing_on_stdout(backend: FakeBackend) -> None:
    for args in (
        ["next"],
        ["nosuchcommand"],
        ["reset", "CUS", "--bogus"],
        ["audit", "--action", "x"],
    ):
        result = idm(backend, *args)
        assert (result.exit_code, result.stdout) == (2, ""), args
    assert backend.urls == []


# -- database URL ----------------------------------------------------------------------------


def test_the_database_url_comes_from_the_option_the_environment_or_the_default(
    backend: FakeBackend,
) -> None:
    ok(backend, "next", "URL", "--database-url", "postgresql://app@db/one")
    ok(backend, "next", "URL", IDMANAGER_DATABASE_URL="sqlite:///from-env.db")
    ok(backend, "list", "--database-url", "sqlite:///option.db", IDMANAGER_DATABASE_URL="x://y")
    ok(backend, "show", "URL")
    assert backend.urls == [
        "postgresql://app@db/one",
        "sqlite:///from-env.db",
        "sqlite:///option.db",
        DEFAULT_DATABASE_URL,
    ]


def test_an_unusable_database_url_is_exit_2_before_connecting() -> None:
    # The real backend: the URL is refused before any driver connects.
    oracle = idm(None, "next", "URL", "--database-url", "oracle://scott@db/orcl")
    assert failed(oracle, 2).startswith(
        "error: invalid database URL: Unsupported database 'oracle'"
    )
    for command in ("list", "migrate", "health", "audit"):
        message = failed(idm(None, command, "--database-url", "not a url"), 2)
        assert message.startswith("error: invalid database URL: "), command


def test_a_sqlite_file_that_does_not_exist_is_refused_rather_than_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real backend: a mistyped path must not leave an empty database behind.
    monkeypatch.chdir(tmp_path)
    typo = tmp_path.resolve() / "typo.db"
    commands = [
        ["list"],
        ["show", "CUS"],
        ["health"],
        ["audit"],
        ["next", "CUS"],
        ["reset", "CUS", "--to", "CUS-AAA0009"],
        ["activate", "CUS"],
        ["deactivate", "CUS"],
    ]
    for url in (f"sqlite:///{typo}", f"sqlite+aiosqlite:///{typo}", "sqlite:///typo.db"):
        for args in commands:
            assert failed(idm(None, *args, "--database-url", url), 2) == (
                f"error: SQLite database {typo} does not exist; run "
                f"`idmanager migrate --database-url {url}` to create it"
            ), args
    assert list(tmp_path.iterdir()) == []
    # Migrated, it is read; an in-memory database is never refused for want of a file.
    assert idm(None, "migrate", "--database-url", f"sqlite:///{typo}").exit_code == 0
    assert ok(None, "list", "--database-url", "sqlite:///typo.db") == (
        "no prefixes yet: `idmanager next PREFIX` creates one\n"
    )
    assert "Database not migrated" in failed(idm(None, "list", "--database-url", "sqlite://"), 1)
    # A missing folder is named as such.
    missing = tmp_path.resolve() / "no" / "such"
    assert failed(idm(None, "list", "--database-url", f"sqlite:///{missing}/ids.db"), 2) == (
        f"error: The SQLite database's folder {missing} does not exist"
    )


def test_import_legacy_refuses_a_target_sqlite_file_that_does_not_exist(
    seed_file: str, tmp_path: Path
) -> None:
    typo = tmp_path.resolve() / "typo.db"
    url = f"sqlite:///{typo}"
    result = idm(None, "import-legacy", "--from", seed_file, "--database-url", url)
    assert failed(result, 2) == (
        f"error: SQLite database {typo} does not exist; run "
        f"`idmanager migrate --database-url {url}` to create it"
    )
    assert not typo.exists()


# -- the actor -------------------------------------------------------------------------------


def test_changes_are_audited_under_the_actor(backend: FakeBackend) -> None:
    ok(backend, "next", "ACT", "--actor", "alice")
    ok(backend, "reset", "ACT", "--to", "ACT-AAA0009", IDMANAGER_ACTOR="bob")
    ok(backend, "deactivate", "ACT", "--actor", "carol", IDMANAGER_ACTOR="bob")
    ok(backend, "activate", "ACT")
    assert [(e.action, e.actor) for e in backend.repository.entries()] == [
        (AuditAction.CREATE, "alice"),
        (AuditAction.RESET, "bob"),
        (AuditAction.DEACTIVATE, "carol"),
        (AuditAction.ACTIVATE, default_actor()),
    ]
    assert backend.repository.rows["", "ACT"].created_by == "alice"


def test_reading_commands_name_no_actor(backend: FakeBackend) -> None:
    ok(backend, "next", "RD")
    for args in (["list"], ["show", "RD"], ["health"], ["audit"]):
        ok(backend, *args, IDMANAGER_ACTOR="bob")
        assert backend.options[-1].actor is None, args


def test_the_default_actor_is_user_at_host(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_actor() == f"{getpass.getuser()}@{socket.gethostname()}"

    def no_name() -> str:
        raise KeyError("getpwuid(): uid not found: 1234")

    monkeypatch.setattr(getpass, "getuser", no_name)  # a container's anonymous uid
    assert default_actor() == f"unknown@{socket.gethostname()}"


# -- audit -----------------------------------------------------------------------------------


@pytest.fixture
def trail(backend: FakeBackend) -> FakeBackend:
    """Seven changes by three actors, recorded on the 1st to the 7th of January 2026."""
    ok(backend, "next", "CUS", "-n", "5", "--actor", "alice")  # 1 create
    ok(backend, "next", "CUS", "--scope", "acme", "--actor", "bob")  # 2 create acme/CUS
    ok(backend, "reset", "CUS", "--to", "CUS-AAA0100", "--actor", "alice")  # 3 reset
    ok(backend, "reset", "CUS", "--to", "CUS-AAA0050", "--force", "--actor", "carol")  # 4
    ok(backend, "next", "VEN", "--actor", "bob")  # 5 create
    ok(backend, "deactivate", "VEN", "--actor", "carol")  # 6
    ok(backend, "activate", "VEN", "--actor", "alice")  # 7
    repository = backend.repository
    repository.audit = [
        replace(stored, at=datetime(2026, 1, stored.id, 9, 30, tzinfo=UTC))
        for stored in repository.audit
    ]
    return backend


def audited(backend: FakeBackend, *options: str) -> list[int]:
    """Return the entry numbers ``audit --json OPTIONS`` lists (one page)."""
    return [item["id"] for item in json.loads(ok(backend, "audit", "--json", *options))["items"]]


def test_audit_lists_who_changed_what_newest_first(trail: FakeBackend) -> None:
    table = rows(ok(trail, "audit"))
    assert table[0] == ["#", "When (UTC)", "Actor", "Action", "Sequence", "Change"]
    assert [row[:5] for row in table[1:]] == [
        ["7", "2026-01-07 09:30:00", "alice", "activate", "VEN"],
        ["6", "2026-01-06 09:30:00", "carol", "deactivate", "VEN"],
        ["5", "2026-01-05 09:30:00", "bob", "create", "VEN"],
        ["4", "2026-01-04 09:30:00", "carol", "reset", "CUS"],
        ["3", "2026-01-03 09:30:00", "alice", "reset", "CUS"],
        ["2", "2026-01-02 09:30:00", "bob", "create", "acme/CUS"],
        ["1", "2026-01-01 09:30:00", "alice", "create", "CUS"],
    ]
    assert table[4][5] == "CUS-AAA0100 -> CUS-AAA0050; forced"
    assert table[5][5] == "CUS-AAA0005 -> CUS-AAA0100"
    assert table[7][5].startswith("(none) -> CUS-AAA0005; created on first use")


def test_audit_json_is_the_audit_page(trail: FakeBackend) -> None:
    document = json.loads(ok(trail, "audit", "--json", "--limit", "3"))
    page = trail.direct().run(lambda s: s.list_audit(limit=3), commit=False)
    assert document == to_json(page)
    assert [item["id"] for item in document["items"]] == [7, 6, 5]
    assert document["next_cursor"] == 5
    forced = json.loads(ok(trail, "audit", "--json", "--action", "reset", "--actor", "carol"))
    assert forced["items"][0] | {"at": None} == {
        "id": 4,
        "at": None,
        "scope": "",
        "prefix": "CUS",
        "action": "reset",
        "actor": "carol",
        "old_value": 100,
        "new_value": 50,
        "old_id": "CUS-AAA0100",
        "new_id": "CUS-AAA0050",
        "detail": "forced",
    }
    assert forced["next_cursor"] is None


def test_audit_filters(trail: FakeBackend) -> None:
    assert audited(trail, "--scope", "acme") == [2]
    assert audited(trail, "--scope", "") == [7, 6, 5, 4, 3, 1]
    assert audited(trail, "--prefix", "cus") == [4, 3, 2, 1]
    assert audited(trail, "--prefix", "CUS", "--scope", "") == [4, 3, 1]
    assert audited(trail, "--actor", "bob") == [5, 2]
    assert audited(trail, "--action", "create") == [5, 2, 1]
    assert audited(trail, "--since", "2026-01-03", "--until", "2026-01-05") == [4, 3]
    assert audited(trail, "--since", "2026-01-06T09:30:00") == [7, 6]
    assert audited(trail, "--until", "2026-01-02 09:30:01") == [2, 1]
    assert audited(trail, "--actor", "nobody") == []
    assert ok(trail, "audit", "--actor", "nobody") == "no audit entries match\n"


def test_audit_pages_with_before(trail: FakeBackend) -> None:
    first = ok(trail, "audit", "--limit", "3")
    assert first.splitlines()[-1] == "more: --before 5"
    assert [row[0] for row in rows(first)[1:-1]] == ["7", "6", "5"]
    second = ok(trail, "audit", "--limit", "3", "--before", "5")
    assert second.splitlines()[-1] == "more: --before 2"
    last = ok(trail, "audit", "--limit", "3", "--before", "2")
    assert [row[0] for row in rows(last)[1:]] == ["1"]
    assert "more:" not in last
    cursor: int | None = None
    seen: list[int] = []
    while True:
        options = ["--limit", "2", *(["--before", str(cursor)] if cursor else [])]
        page = json.loads(ok(trail, "audit", "--json", *options))
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]


def test_audit_refuses_bad_options_with_exit_2(trail: FakeBackend) -> None:
    assert failed(idm(trail, "audit", "--limit", "0"), 2) == (
        "error: limit must be between 1 and 1000, got 0"
    )
    assert failed(idm(trail, "audit", "--before", "0"), 2) == (
        "error: before must be an entry number between 1 and 9223372036854775807, got 0"
    )
    for args in (["--since", "yesterday"], ["--action", "delete"]):
        result = idm(trail, "audit", *args)
        assert (result.exit_code, result.stdout) == (2, ""), args


# -- import-legacy ---------------------------------------------------------------------------

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
NEXT_IDS = {
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


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seed's SQLite database as its application left it (and a renamed table)."""
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        create_seed_table(engine, "id_managers", SEED_ROWS)
        create_seed_table(
            engine, "seed_ids", [("CUS", "CUS-AAB0012", True), ("PUR", "PUR-AAA001", True)]
        )
    finally:
        engine.dispose()
    yield f"sqlite:///{path}"


def import_legacy(backend: FakeBackend, seed_file: str, *options: str, **env: str | None) -> Result:
    return idm(backend, "import-legacy", "--from", seed_file, *options, **env)


def test_import_dry_run_reports_every_row_and_writes_nothing(
    backend: FakeBackend, seed_file: str
) -> None:
    out = ok(backend, "import-legacy", "--from", seed_file, "--dry-run", "--on-corrupt", "skip")
    assert out.splitlines() == [
        *REPORT,
        f"14 rows in id_managers: {COUNTS}; dry run, nothing written",
    ]
    assert backend.repository.rows == {} and backend.repository.audit == []


def test_import_refusing_rows_writes_nothing_and_exits_2(
    backend: FakeBackend, seed_file: str
) -> None:
    result = import_legacy(backend, seed_file)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        *REPORT,
        f"14 rows in id_managers: {COUNTS}; nothing written",
    ]
    assert result.stderr == (
        "error: 3 of 14 rows cannot be imported (refused above); nothing was written. "
        "Correct them in the source, or rerun with --on-corrupt skip to import the others\n"
    )
    dry = import_legacy(backend, seed_file, "--dry-run")
    assert dry.exit_code == 2
    assert dry.stdout.splitlines()[:-1] == REPORT
    assert "; a real run would write nothing. " in dry.stderr
    assert backend.repository.rows == {} and backend.repository.audit == []


def test_import_skip_continues_every_readable_sequence(
    backend: FakeBackend, seed_file: str
) -> None:
    out = ok(
        backend, "import-legacy", "--from", seed_file, "--on-corrupt", "skip", "--actor", "ops"
    )
    assert out.splitlines() == [*REPORT, f"14 rows in id_managers: {COUNTS}; written"]
    sequences = backend.repository.rows
    assert {prefix: m.next_id for (_, prefix), m in sequences.items()} == NEXT_IDS
    assert sorted(p for (_, p), m in sequences.items() if not m.is_active) == ["INVY", "VEN"]
    imports = [e for e in backend.repository.entries() if e.prefix == "CUS"]
    assert imports == [
        AuditEntry(
            "", "CUS", AuditAction.IMPORT, None, 10_011, "ops", "legacy latest ID 'cus-aab12'"
        )
    ]
    assert ok(backend, "next", "CUS", "-n", "2") == "CUS-AAB0013\nCUS-AAB0014\n"
    assert (
        failed(idm(backend, "next", "VEN"), 3)
        == "error: Prefix VEN is inactive and issues no new IDs"
    )
    assert audited(backend, "--action", "import", "--actor", "ops", "--limit", "100") != []


def test_import_again_changes_nothing_and_json_is_the_report(
    backend: FakeBackend, seed_file: str
) -> None:
    ok(backend, "import-legacy", "--from", seed_file, "--on-corrupt", "skip")
    ok(backend, "next", "CUS")  # the target moves on: the legacy value is now behind it
    # What the library's import reports on the same state is exactly what --json prints.
    twin = FakeBackend(copy.deepcopy(backend.repository))
    source = legacy_source.source_engine(seed_file)
    try:
        values = legacy_source.read_legacy_rows(source)
    finally:
        source.dispose()
    expected = legacy.import_legacy(
        [legacy.LegacyRow(*row) for row in values], twin.direct("ops"), on_corrupt="skip"
    )
    document = json.loads(
        ok(backend, "import-legacy", "--from", seed_file, "--on-corrupt", "skip", "--json")
    )
    assert document == to_json(expected.to_dict())
    assert document["counts"] == {
        "imported": 0,
        "corrected": 0,
        "reset": 0,
        "unchanged": 10,
        "refused": 3,
        "skipped": 1,
    }
    cus = next(row for row in document["rows"] if row["prefix"] == "CUS")
    assert (cus["reason"], cus["next_id"]) == (
        "the target is already at CUS-AAB0013",
        "CUS-AAB0014",
    )
    # In fail mode, a rerun still refuses the unreadable rows and writes nothing.
    again = import_legacy(backend, seed_file, "--json")
    assert again.exit_code == 2 and json.loads(again.stdout)["written"] is False


def test_import_reset_restarts_unreadable_rows_and_warns_on_stderr(
    backend: FakeBackend, seed_file: str
) -> None:
    result = import_legacy(backend, seed_file, "--on-corrupt", "reset")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "WARNING: BAD restarts at BAD-AAA0001 because its latest ID 'BAD-invalidID' cannot be "
        "read: IDs it issued before may be issued again while they are still in use",
        "WARNING: OLD restarts at OLD-AAA0001 because its latest ID 'OLD-AAA12345' cannot be "
        "read: IDs it issued before may be issued again while they are still in use",
    ]
    lines = result.stdout.splitlines()
    assert (
        "reset BAD: 'BAD-invalidID' cannot be read (Invalid ID 'BAD-invalidID': expected "
        "letters A-Z then digits after the prefix); restarted, next BAD-AAA0001"
    ) in lines
    assert REFUSED[1] in lines  # no valid prefix: nothing to restart
    assert lines[-1].endswith("2 reset, 0 unchanged, 1 refused, 1 skipped; written")
    assert ok(backend, "next", "BAD") == "BAD-AAA0001\n"
    dry = import_legacy(FakeBackend(), seed_file, "--on-corrupt", "reset", "--dry-run")
    assert "WARNING: BAD would restart at BAD-AAA0001 " in dry.stderr


def test_import_another_table_into_a_scope(backend: FakeBackend, seed_file: str) -> None:
    out = ok(
        backend, "import-legacy", "--from", seed_file, "--table", "seed_ids", "--scope", "acme"
    )
    assert out.splitlines() == [
        "imported CUS -> next CUS-AAB0013",
        "corrected PUR: 'PUR-AAA001' -> PUR-AAA0001, next PUR-AAA0002",
        "2 rows in seed_ids: 1 imported, 1 corrected, 0 reset, 0 unchanged, 0 refused, "
        "0 skipped; written",
    ]
    assert sorted(backend.repository.rows) == [("acme", "CUS"), ("acme", "PUR")]
    assert ok(backend, "next", "CUS", "--scope", "acme") == "CUS-AAB0013\n"
    assert ok(backend, "next", "CUS") == "CUS-AAA0001\n"


def test_import_errors_are_one_line_with_the_exit_code_of_their_kind(
    backend: FakeBackend, seed_file: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.db"
    for source, options, code, start in [
        ("nonsense://x", [], 2, "error: invalid --from database URL"),
        (
            f"sqlite:///{missing}",
            [],
            2,
            f"error: The seed's SQLite database {missing} does not exist",
        ),
        (seed_file, ["--table", "nope"], 2, "error: Cannot read the seed's table 'nope'"),
        (seed_file, ["--on-corrupt", "skip", "--scope", "a b"], 2, "error: Scope can only contain"),
        ("postgresql://nobody@127.0.0.1:1/seed", [], 1, "error: Source database unavailable"),
    ]:
        assert failed(import_legacy(backend, source, *options), code).startswith(start), source
    assert not missing.exists()  # a misspelt seed file is not created
    backend.repository.fail = StorageError(
        "The database has no IdManager schema: run `idmanager migrate` first"
    )
    message = failed(import_legacy(backend, seed_file, "--on-corrupt", "skip"), 1)
    assert "run `idmanager migrate` first" in message
    no_source = idm(backend, "import-legacy")
    assert (no_source.exit_code, no_source.stdout) == (2, "") and "--from" in no_source.stderr


# -- serve (its refusals; serving itself is a subprocess journey) ----------------------------


def test_serve_refuses_a_public_host_without_api_keys(
    backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file is read, no ./idmanager.db created
    message = failed(idm(backend, "serve", "--host", "0.0.0.0", "--port", "8123"), 2)
    assert message == (
        "error: refusing to serve on 0.0.0.0 without API keys: set IDMANAGER_API_KEYS "
        "(e.g. 's3cret-admin-key-1:admin') or serve on a loopback address such as 127.0.0.1"
    )
    assert list(tmp_path.iterdir()) == []
    assert "IDMANAGER_HOST" not in os.environ  # the runner restored the environment


def test_serve_refuses_invalid_settings_naming_the_variable(
    backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = failed(idm(backend, "serve", IDMANAGER_MAX_BULK="lots"), 2)
    assert message.startswith("error: invalid settings: IDMANAGER_MAX_BULK: ")
    assert list(tmp_path.iterdir()) == []


def test_the_fiscal_year_start_is_a_global_option_and_a_setting() -> None:
    backend = FakeBackend()
    args = ("next", "INV{FY}", "--date", "2026-05-01")
    assert ok(backend, *args) == "INV2026-AAA0001\n"  # the calendar year by default
    assert ok(backend, "--fiscal-year-start", "4", *args) == "INV2027-AAA0001\n"
    assert ok(backend, *args, IDMANAGER_FISCAL_YEAR_START="4") == "INV2027-AAA0002\n"
    bad = idm(backend, "--fiscal-year-start", "13", *args)
    assert bad.exit_code == 2 and "--fiscal-year-start" in bad.stderr
