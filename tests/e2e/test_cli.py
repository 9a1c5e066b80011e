"""``idmanager`` as an operator runs it: a real process, real databases, a real terminal.

The breadth of the command line (every command, option, output and exit code) is tested
in-process in ``tests/unit/test_cli.py``. Here are the journeys only a real process shows:
the installed command on SQLite and PostgreSQL from ``migrate`` to ``audit``, the database
URL from the environment, a server that does not answer, a schema not yet created, a reader
that goes away, a progress bar on a terminal, and ``serve`` answering HTTP. An unreachable
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
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from idmanager import format_id
from processes import reaped

# The command as installed (the console script next to this interpreter); `python -m
# idmanager` runs the same program and is used where the journey is not about installation.
INSTALLED = Path(sys.executable).parent / "idmanager"
MODULE = [sys.executable, "-m", "idmanager"]


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment without IdManager settings, so only the test's own apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_") and k != "COLUMNS"}
    env["COLUMNS"] = "200"  # tables on one line per row
    env.update(extra)
    return env


def idm(
    *args: str,
    url: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    command: list[str] = MODULE,
) -> CompletedProcess[str]:
    """Run ``idmanager ARGS [--database-url URL]`` as a process and return what it did."""
    return subprocess.run(
        [*command, *args, *(["--database-url", url] if url is not None else [])],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=60,
    )


def idm_many(*commands: tuple[str, ...], url: str) -> list[CompletedProcess[str]]:
    """Run independent commands at the same time (saves wall time); return them in order."""
    results = []
    with reaped([]) as processes:
        processes.extend(
            subprocess.Popen(
                [*MODULE, *args, "--database-url", url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=clean_env(),
            )
            for args in commands
        )
        for args, process in zip(commands, processes, strict=True):
            out, err = process.communicate(timeout=60)
            results.append(CompletedProcess(list(args), process.returncode, out, err))
    return results


def one_line_error(result: CompletedProcess[str], code: int) -> str:
    """Check a failure: the exit code, one ``error:`` line on stderr, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file, for the journeys that do not depend on the backend."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'ids.db'}"
    result = idm("migrate", url=url)
    assert result.returncode == 0, result.stderr
    return url


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_an_operator_numbers_resets_deactivates_and_reads_the_audit(
    dialect: str, databases: Any
) -> None:
    url = databases.create(dialect, migrate=False)

    def run(*args: str, **env: str) -> CompletedProcess[str]:
        return idm(*args, url=url, env=clean_env(**env), command=[str(INSTALLED)])

    def ok(*args: str, **env: str) -> str:
        result = run(*args, **env)
        assert (result.returncode, result.stderr) == (0, ""), (args, result.stderr)
        return result.stdout

    assert ok("migrate") == "database is up to date\n"
    assert json.loads(ok("migrate", "--json")) == {"status": "up to date"}  # again: a no-op

    assert ok("next", "CUS", "-n", "3", "--actor", "alice") == (
        "CUS-AAA0001\nCUS-AAA0002\nCUS-AAA0003\n"
    )
    assert json.loads(ok("next", "cus", "--json"))["ids"] == ["CUS-AAA0004"]
    assert ok("next", "INV{YYYY}", "--date", "2026-12-31") == "INV2026-AAA0001\n"

    assert ok("reset", "CUS", "--to", "CUS-AAA0100", "--actor", "alice") == (
        "reset CUS: latest ID CUS-AAA0004 -> CUS-AAA0100, next ID CUS-AAA0101\n"
    )
    backwards = one_line_error(run("reset", "CUS", "--to", "CUS-AAA0050"), 3)
    assert backwards.endswith("pass --force to do it anyway")

    ok("deactivate", "CUS", IDMANAGER_ACTOR="bob")
    assert one_line_error(run("next", "CUS"), 3) == (
        "error: Prefix CUS is inactive and issues no new IDs"
    )
    assert ok("activate", "CUS", "--actor", "carol") == "CUS is active: next ID CUS-AAA0101\n"
    assert ok("next", "CUS") == "CUS-AAA0101\n"

    assert ok("health").startswith("healthy: ID Manager service is operational (2 prefixes")
    listed, shown, trail, resets = idm_many(
        ("list", "--json"),
        ("show", "CUS", "--json"),
        ("audit", "--prefix", "CUS"),
        ("audit", "--json", "--action", "reset", "--actor", "alice"),
        url=url,
    )
    # The health check left nothing behind; the sequences are as the journey left them.
    assert [(item["prefix"], item["latest_id"]) for item in json.loads(listed.stdout)] == [
        ("CUS", "CUS-AAA0101"),
        ("INV2026", "INV2026-AAA0001"),
    ]
    assert json.loads(shown.stdout)["created_by"] == "alice"
    table = [line.split()[3:5] for line in trail.stdout.splitlines()[1:]]  # actor, action
    assert table == [
        ["carol", "activate"],
        ["bob", "deactivate"],
        ["alice", "reset"],
        ["alice", "create"],
    ], trail.stdout
    (reset,) = json.loads(resets.stdout)["items"]
    assert (reset["old_id"], reset["new_id"], reset["actor"]) == (
        "CUS-AAA0004",
        "CUS-AAA0100",
        "alice",
    )


def test_database_url_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    result = idm("next", "ENV", env=clean_env(IDMANAGER_DATABASE_URL=sqlite_url), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "ENV-AAA0001\n"), result.stderr
    assert not (tmp_path / "idmanager.db").exists()


def test_an_unreachable_database_is_reported_at_once() -> None:
    closed = f"postgresql://postgres@127.0.0.1:{unused_port()}/nowhere"
    started = time.monotonic()
    down, report, allocation = idm_many(
        ("health",), ("health", "--json"), ("next", "URL"), url=closed
    )
    assert time.monotonic() - started < 15
    assert (down.returncode, down.stdout) == (1, "")
    assert down.stderr.startswith("unhealthy: ID Manager service error: Database unavailable")
    assert down.stderr.count("\n") == 1
    assert report.returncode == 1
    assert json.loads(report.stdout)["status"] == "unhealthy"
    assert json.loads(report.stdout)["error_type"] == "StorageError"
    assert "Database unavailable" in one_line_error(allocation, 1)


def test_a_database_without_the_schema_says_to_migrate(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # a database file, with no tables
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    message = one_line_error(idm("next", "MIG", url=url), 1)
    assert "run `idmanager migrate` first" in message
    # A mistyped path: said so, and no empty file is left behind.
    typo = one_line_error(idm("next", "MIG", url=f"sqlite:///{tmp_path / 'typo.db'}"), 2)
    assert "does not exist; run `idmanager migrate" in typo
    assert not (tmp_path / "typo.db").exists()


def test_progress_bar_goes_to_a_terminal_stderr_only(sqlite_url: str) -> None:
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [*MODULE, "next", "PGB", "-n", "300000"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=clean_env(IDMANAGER_DATABASE_URL=sqlite_url, TERM="xterm"),
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
        [*MODULE, "next", "HED", "-n", "300000"],
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
    # The IDs were committed before printing: the next run continues after them.
    assert idm("next", "HED", url=sqlite_url).stdout == format_id("HED", 300_001) + "\n"


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
        [str(INSTALLED), "serve", "--port", str(port)],
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
    # `serve` applied the migrations: the command line finds the schema in place.
    assert idm("list", "--json", url=f"sqlite:///{database}").stdout == "[]\n"
