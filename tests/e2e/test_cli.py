"""The ``idmanager`` command line as a user drives it: a subprocess, its output, its exit code.

Every backend test runs on a temporary SQLite file and on a fresh PostgreSQL database (created
through the ``postgres`` database at 127.0.0.1:5432 and dropped afterwards). An unreachable
PostgreSQL fails these tests: it never skips them.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from sqlalchemy import create_engine, text

from idmanager import format_id

PG_ADMIN_URL = os.environ.get(
    "IDMANAGER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
EXIT_INPUT, EXIT_CONFLICT, EXIT_NOT_FOUND = 2, 3, 4


@dataclass(frozen=True)
class Db:
    backend: str
    url: str


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment without IdManager settings, so only the test's own apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_") and k != "COLUMNS"}
    env.update(extra)
    return env


def idm(
    *args: str,
    url: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> CompletedProcess[str]:
    """Run ``python -m idmanager ARGS [--database-url URL]`` and return what it did."""
    command = [sys.executable, "-m", "idmanager", *args]
    if url is not None:
        command += ["--database-url", url]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )


def idm_many(*commands: tuple[str, ...], url: str | None = None) -> list[CompletedProcess[str]]:
    """Run independent commands at the same time (saves wall time); return them in order."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "idmanager", *args, *(["--database-url", url] if url else [])],
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
        results.append(subprocess.CompletedProcess(list(args), process.returncode, out, err))
    return results


def ok(*args: str, url: str) -> str:
    """Run a command that must succeed, and return its stdout."""
    result = idm(*args, url=url)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: CompletedProcess[str], code: int) -> str:
    """Check a failure: the exit code, one ``error:`` line on stderr, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """Create a fresh PostgreSQL database for this module; drop it afterwards."""
    name = f"idm_cli_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def migrated(url: str) -> str:
    result = idm("migrate", url=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "database is up to date\n"
    return url


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file, for what does not depend on the backend."""
    return migrated(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'ids.db'}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Db:
    """A migrated database of each backend, shared by the module (each test has its prefix)."""
    if request.param == "sqlite":
        return Db("sqlite", request.getfixturevalue("sqlite_url"))
    return Db("postgresql", migrated(request.getfixturevalue("postgres_url")))


def test_migrate_is_idempotent(db: Db) -> None:
    # The fixture migrated the database once already.
    assert json.loads(ok("migrate", "--json", url=db.url)) == {"status": "up to date"}


def test_next_issues_consecutive_ids(db: Db) -> None:
    assert ok("next", "NXT", url=db.url) == "NXT-AAA0001\n"
    assert ok("next", "nxt", url=db.url) == "NXT-AAA0002\n"
    assert ok("next", "NXT", "-n", "3", url=db.url).splitlines() == [
        "NXT-AAA0003",
        "NXT-AAA0004",
        "NXT-AAA0005",
    ]
    document = json.loads(ok("next", "NXT", "--count", "2", "--json", url=db.url))
    assert document == {
        "prefix": "NXT",
        "scope": "",
        "count": 2,
        "ids": ["NXT-AAA0006", "NXT-AAA0007"],
    }


def test_scopes_are_separate_sequences(db: Db) -> None:
    assert ok("next", "SCP", "--scope", "acme", url=db.url) == "SCP-AAA0001\n"
    assert ok("next", "SCP", "--scope", "acme", url=db.url) == "SCP-AAA0002\n"
    assert ok("next", "SCP", url=db.url) == "SCP-AAA0001\n"


def test_period_templates_number_each_period_from_the_date(db: Db) -> None:
    assert ok("next", "PER{YYYY}", "--date", "2026-12-31", url=db.url) == "PER2026-AAA0001\n"
    assert ok("next", "PER{YYYY}", "--date", "2027-01-01", url=db.url) == "PER2027-AAA0001\n"
    assert ok("next", "PER{YYYY}", "--date", "2026-06-30", url=db.url) == "PER2026-AAA0002\n"
    shown = json.loads(ok("show", "PER{YYYY}", "--date", "2026-01-01", "--json", url=db.url))
    assert (shown["prefix"], shown["latest_id"]) == ("PER2026", "PER2026-AAA0002")
    message = one_line_error(idm("next", "PER{XX}", url=db.url), 2)
    assert "Unknown date token {XX}" in message


def test_database_url_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    result = idm("next", "ENV", env=clean_env(IDMANAGER_DATABASE_URL=sqlite_url), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "ENV-AAA0001\n"), result.stderr
    assert not (tmp_path / "idmanager.db").exists()


def test_large_bulk_streams_only_ids_on_stdout(db: Db) -> None:
    count = 150_000
    result = idm("next", "BLK", "-n", str(count), url=db.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == count
    assert lines[0] == "BLK-AAA0001"
    assert lines[9_999] == "BLK-AAB0001"
    assert lines[-1] == format_id("BLK", count)
    document = json.loads(ok("next", "BLK", "-n", str(count), "--json", url=db.url))
    assert document["count"] == len(document["ids"]) == count
    assert document["ids"][0] == format_id("BLK", count + 1)
    assert document["ids"][-1] == format_id("BLK", 2 * count)


def test_reset_forward_backward_forced_and_dry_run(db: Db) -> None:
    ok("next", "RST", "-n", "5", url=db.url)
    out = ok("reset", "RST", "--to", "RST-AAA0010", url=db.url)
    assert out == "reset RST: latest ID RST-AAA0005 -> RST-AAA0010, next ID RST-AAA0011\n"
    assert ok("next", "RST", url=db.url) == "RST-AAA0011\n"

    message = one_line_error(idm("reset", "RST", "--to", "RST-AAA0003", url=db.url), 3)
    assert message == (
        "error: Resetting RST to RST-AAA0003 would move it backwards from RST-AAA0011 "
        "and issue IDs again; pass --force to do it anyway"
    )
    dry = ok("reset", "RST", "--to", "RST-AAA0004", "--force", "--dry-run", url=db.url)
    assert dry.startswith("dry run, nothing changed") and "next ID RST-AAA0005" in dry

    # Lenient format correction of --to; previous_id shows neither attempt above changed a thing.
    forced = json.loads(ok("reset", "RST", "--to", "rst-aaa2", "--force", "--json", url=db.url))
    assert forced == {
        "prefix": "RST",
        "scope": "",
        "previous_id": "RST-AAA0011",
        "latest_id": "RST-AAA0002",
        "next_id": "RST-AAA0003",
        "forced": True,
        "dry_run": False,
    }
    assert ok("next", "RST", url=db.url) == "RST-AAA0003\n"


def test_list_and_show(db: Db) -> None:
    ok("next", "LST", "-n", "3", url=db.url)
    table, listed, shown, stats, unknown = idm_many(
        ("list",),
        ("list", "--json", "--limit", "1000"),
        ("show", "lst"),
        ("show", "LST", "--json"),
        ("show", "LSTNONE"),
        url=db.url,
    )
    assert table.returncode == 0, table.stderr
    assert "LST-AAA0003" in table.stdout and "LST-AAA0004" in table.stdout
    by_prefix = {item["prefix"]: item for item in json.loads(listed.stdout)}
    assert by_prefix["LST"]["latest_id"] == "LST-AAA0003"
    assert by_prefix["LST"]["count_issued"] == 3
    assert "_HEALTH_CHECK_" not in by_prefix
    assert shown.returncode == 0, shown.stderr
    assert "LST-AAA0003" in shown.stdout and "LST-AAA0004" in shown.stdout
    assert json.loads(stats.stdout)["next_id"] == "LST-AAA0004"
    message = one_line_error(unknown, EXIT_NOT_FOUND)
    assert message == "error: Prefix LSTNONE does not exist; its first ID would be LSTNONE-AAA0001"


def test_deactivated_prefix_refuses_ids_until_activated(db: Db) -> None:
    ok("next", "DEA", url=db.url)
    assert "inactive" in ok("deactivate", "DEA", url=db.url)
    message = one_line_error(idm("next", "DEA", url=db.url), EXIT_CONFLICT)
    assert message == "error: Prefix DEA is inactive and issues no new IDs"
    inactive = json.loads(ok("list", "--json", "--active-only", url=db.url))
    assert "DEA" not in {item["prefix"] for item in inactive}
    assert json.loads(ok("activate", "DEA", "--json", url=db.url))["is_active"] is True
    assert ok("next", "DEA", url=db.url) == "DEA-AAA0002\n"


def test_health(db: Db) -> None:
    healthy, report = idm_many(("health",), ("health", "--json"), url=db.url)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("healthy: ID Manager service is operational")
    assert json.loads(report.stdout)["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"


def test_health_reports_an_unreachable_database_at_once() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{unused_port()}/nowhere"
    started = time.monotonic()
    down, report = idm_many(("health",), ("health", "--json"), url=closed)
    assert time.monotonic() - started < 15
    assert (down.returncode, down.stdout) == (1, "")
    assert down.stderr.startswith("unhealthy: ID Manager service error: Database unavailable")
    assert down.stderr.count("\n") == 1
    assert report.returncode == 1
    assert json.loads(report.stdout)["status"] == "unhealthy"
    assert json.loads(report.stdout)["error_type"] == "StorageError"


def test_bad_input_is_one_line_and_exit_2(sqlite_url: str) -> None:
    # Checked before any SQL runs: one backend is enough.
    prefix, count, reset_id, other_prefix = idm_many(
        ("next", "BAD-PREFIX!"),
        ("next", "CNT", "-n", "0"),
        ("reset", "CNT", "--to", "CNT-AAA!"),
        ("reset", "RSO", "--to", "CUS-AAA0001"),
        url=sqlite_url,
    )
    assert one_line_error(prefix, EXIT_INPUT) == (
        "error: Prefix can only contain uppercase letters, numbers, and underscores"
    )
    assert one_line_error(count, EXIT_INPUT) == "error: Count must be greater than 0"
    assert "CNT-AAA!" in one_line_error(reset_id, EXIT_INPUT)
    assert one_line_error(other_prefix, EXIT_INPUT) == "error: Reset ID must start with 'RSO-'"


def test_unusable_database_urls() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{unused_port()}/nowhere"
    oracle, garbage, migrate, refused = (
        idm_many(("next", "URL"), url="oracle://scott@db/orcl")
        + idm_many(("list",), ("migrate",), url="not a url")
        + idm_many(("next", "URL"), url=closed)
    )
    message = one_line_error(oracle, EXIT_INPUT)
    assert message.startswith("error: invalid database URL: Unsupported database 'oracle'")
    one_line_error(garbage, EXIT_INPUT)
    one_line_error(migrate, EXIT_INPUT)
    assert "Database unavailable" in one_line_error(refused, 1)


def test_missing_schema_says_to_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    message = one_line_error(idm("next", "MIG", url=url), 1)
    assert "run `idmanager migrate` first" in message


def test_progress_bar_goes_to_a_terminal_stderr_only(sqlite_url: str) -> None:
    url = sqlite_url
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "idmanager", "next", "PGB", "-n", "300000"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=clean_env(IDMANAGER_DATABASE_URL=url, TERM="xterm"),
            timeout=60,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 300_000 and lines[-1] == format_id("PGB", 300_000)
    assert b"printing IDs" in shown


def test_closed_output_says_what_was_allocated(sqlite_url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "idmanager", "next", "HED", "-n", "300000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(IDMANAGER_DATABASE_URL=sqlite_url),
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == "HED-AAA0001\n"
    process.stdout.close()  # as `| head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert stderr == (
        "error: output closed before every ID was printed; HED-AAA0001 to HED-ABE0030 "
        "(300,000 IDs) were allocated\n"
    )


def test_help_lists_the_commands_and_the_exit_codes(tmp_path: Path) -> None:
    commands = ["next", "reset", "list", "show", "activate", "deactivate", "health", "migrate"]
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "idmanager", *([name] if name else []), "--help"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=clean_env(COLUMNS="200"),
        )
        for name in ["", "next", "serve"]
    }
    outputs = {name: process.communicate(timeout=60)[0] for name, process in runs.items()}
    assert all(process.returncode == 0 for process in runs.values())
    assert all("Exit codes" in out for out in outputs.values())
    assert all(f" {command} " in outputs[""] for command in [*commands, "serve"])
    assert "--count" in outputs["next"] and "--database-url" in outputs["next"]
    assert "--json" in outputs["next"] and "IDMANAGER_DATABASE_URL" in outputs["next"]
    assert "--workers" in outputs["serve"] and "loopback" in outputs["serve"]
    assert not (tmp_path / "idmanager.db").exists(), "--help must not touch a database"


def test_serve_refuses_a_public_host_without_api_keys(tmp_path: Path) -> None:
    result = idm("serve", "--host", "0.0.0.0", "--port", str(unused_port()), cwd=tmp_path)
    message = one_line_error(result, EXIT_INPUT)
    assert "refusing to serve on 0.0.0.0 without API keys" in message
    assert "IDMANAGER_API_KEYS" in message
    assert not (tmp_path / "idmanager.db").exists()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_migrates_and_answers(tmp_path: Path) -> None:
    port = unused_port()
    database = tmp_path / "served.db"
    log = (tmp_path / "out.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "idmanager", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=clean_env(IDMANAGER_DATABASE_URL=f"sqlite+aiosqlite:///{database}"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _ = get(f"{base}/health/live")
                break
            except OSError:
                time.sleep(0.1)
        log.seek(0)
        output = log.read()
        assert status == 200, output
        assert f"IdManager serving on {base} — docs at {base}/docs" in output
        assert "loopback only" in output
        status, body = get(f"{base}/health")
        assert status == 200, body
        assert json.loads(body)["status"] == "healthy"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    # `serve` applied the migrations: the CLI finds the schema in place.
    assert ok("list", "--json", url=f"sqlite:///{database}") == "[]\n"
