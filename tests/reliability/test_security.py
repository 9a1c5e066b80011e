"""Secrets: API keys and the database password never leave the server; they come only from the
environment or a file; the access rules hold whatever else happens.

The access matrix itself (every route x no key / wrong key / each role) is
``tests/e2e/test_http_auth.py``; here it is checked again *under* the reliability runs: in
``test_faults.py`` the three-replica run and the PostgreSQL outage carry clients with an
unknown key, a read-only key and no key, which must get 401/403 throughout (even while the
database is down), and those runs also check that no key appears in the servers' logs.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import sqlalchemy as sa
import typer
from sqlalchemy.orm import Session

import idmanager
from idmanager.cli import app as cli_app
from idmanager.settings import Role, Settings

from .http_load import Keys, ServerProcess, assert_problem, record, server_env

SECRET_WORDS = re.compile(r"key|token|secret|passw|credential|auth|bearer", re.I)


def fragments(secret: str, width: int = 8) -> list[str]:
    """Return every ``width``-character piece of a secret's random part.

    A log that kept only part of a key ("rel-a-Xy3…") leaks too: look for any piece.
    """
    random_part = secret.split("-", 2)[-1]
    return [random_part[i : i + width] for i in range(len(random_part) - width + 1)]


def assert_nowhere(secrets_: list[str], texts: dict[str, str]) -> None:
    for name, text in texts.items():
        for secret in secrets_:
            for piece in fragments(secret):
                assert piece not in text, f"part of a secret appears in {name}: …{piece}…"


# --- keys and the database password never appear in logs or answers -------------------------


def test_secrets_never_appear_in_logs_or_answers(
    databases: Any, tmp_path: Path, prefix: str
) -> None:
    """Every route, every way of sending a key (right, wrong, malformed), every error."""
    keys = Keys()
    password = "db-" + os.urandom(12).hex()
    url = sa.engine.make_url(databases.create("postgresql")).set(password=password)
    url_text = url.render_as_string(hide_password=False)
    server = ServerProcess(
        "secrets",
        server_env(url_text, keys, log_format="json", lock_timeout_ms="500"),
        tmp_path,
        log_level="debug",
    )
    server.start()
    try:
        answers = _exercise(server, keys, url_text, prefix)
    finally:
        server.stop()
    log = server.log()
    engine = idmanager.create_engine(url_text, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        actors = [
            str(a) for (a,) in connection.execute(sa.text("SELECT actor FROM id_manager_audit"))
        ]
    engine.dispose()
    statuses = sorted({status for status, _ in answers})
    record(
        "secrets in logs and answers",
        {
            "requests": len(answers),
            "statuses": statuses,
            "log_lines": log.count("\n"),
            "audit_actors": sorted(set(actors)),
            "secret_fragments_found": 0,
        },
    )
    assert {200, 201, 401, 403, 404, 405, 409, 422, 503} <= set(statuses), statuses
    assert '"message"' in log and "POST /api/v1/prefixes/" in log  # the log did record
    assert actors and all(re.fullmatch(r"api-key:[0-9a-f]{12}", a) for a in actors), actors
    assert_nowhere(
        [*keys.all, password],
        {
            "the server log": log,
            "the answers": "\n".join(text for _, text in answers),
            "the audit trail": "\n".join(actors),
        },
    )


def _exercise(server: ServerProcess, keys: Keys, url: str, prefix: str) -> list[tuple[int, str]]:
    """Send every kind of request, returning (status, headers and body) of each answer."""
    answers: list[tuple[int, str]] = []
    near_misses = [keys.admin + "x", keys.admin[:-1], keys.admin.upper(), " " + keys.admin]
    malformed = [
        f"Basic {base64.b64encode(f'admin:{keys.admin}'.encode()).decode()}",
        f"Token {keys.admin}",
        keys.admin,
        f"Bearer {keys.admin} {keys.read}",
        f"Bearer {keys.admin}, Bearer {keys.read}",
    ]
    authorizations: list[str | None] = [None, "Bearer wrong-key"]
    authorizations += [f"Bearer {k}" for k in (*keys.all, *near_misses)]
    authorizations += malformed
    routes = [
        ("POST", f"/api/v1/prefixes/{prefix}/ids", None),
        ("GET", "/api/v1/prefixes", None),
        ("GET", f"/api/v1/prefixes/{prefix}", None),
        ("PUT", f"/api/v1/prefixes/{prefix}", {"is_active": True}),
        ("POST", f"/api/v1/prefixes/{prefix}/reset", {"force": True, "dry_run": True}),
        ("GET", f"/api/v1/ids/{prefix}-AAA0001", None),
        ("GET", f"/api/v1/prefixes/{prefix}NOPE", None),  # 404
        ("POST", "/api/v1/prefixes/bad!/ids", None),  # 422
        ("DELETE", "/api/v1/prefixes", None),  # 405
        ("GET", "/health", None),
        ("GET", "/metrics", None),
    ]

    def keep(response: httpx.Response) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        answers.append((response.status_code, headers + "\n" + response.text))

    with httpx.Client(base_url=server.url, timeout=10) as client:
        for method, path, body in routes:
            for authorization in authorizations:
                headers = {"Authorization": authorization} if authorization else {}
                keep(client.request(method, path, json=body, headers=headers))
        # Keys sent where no key belongs.
        keep(client.get("/api/v1/prefixes", headers={"X-API-Key": keys.admin}))
        keep(client.get("/api/v1/prefixes", headers={"Cookie": f"token={keys.admin}"}))
        admin = {"Authorization": f"Bearer {keys.admin}"}
        # 409: an inactive prefix refuses IDs.
        client.put(f"/api/v1/prefixes/{prefix}_OFF", json={"is_active": False}, headers=admin)
        keep(client.post(f"/api/v1/prefixes/{prefix}_OFF/ids", headers=admin))
        # 503: the sequence is locked by a transaction elsewhere.
        engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
        with Session(engine) as holder:
            idmanager.IdGeneratorUtil.generate_id(prefix, holder)
            keep(client.post(f"/api/v1/prefixes/{prefix}/ids", headers=admin))
            holder.rollback()
        engine.dispose()
    return answers


# --- secrets come from the environment or a file, never from the command line ---------------


def test_settings_read_keys_from_a_dotenv_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("IDMANAGER_")]:
        monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text("IDMANAGER_API_KEYS=from-file-key:admin\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().api_keys == {"from-file-key": Role.ADMIN}
    monkeypatch.setenv("IDMANAGER_API_KEYS", "from-env-key:read")
    assert Settings().api_keys == {"from-env-key": Role.READ}


def test_serve_takes_its_keys_from_a_dotenv_file(tmp_path: Path) -> None:
    """``idmanager serve`` in a folder with a .env: the keys there, and nowhere on argv."""
    keys = Keys()
    (tmp_path / ".env").write_text(
        f"IDMANAGER_API_KEYS={keys.env()}\n"
        f"IDMANAGER_DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'dotenv.db'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
    idmanager_cli = str(Path(sys.executable).with_name("idmanager"))
    server = ServerProcess(
        "dotenv",
        env,
        tmp_path,
        command=[idmanager_cli, "serve", "--port", "{port}"],
    )
    server.start()
    try:
        assert server.process is not None
        argv = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        base = f"{server.url}/api/v1/prefixes/DOTENV/ids"
        anonymous = httpx.post(base, timeout=10)
        read_only = httpx.post(base, headers=keys.header("read"), timeout=10)
        allowed = httpx.post(base, headers=keys.header("generate"), timeout=10)
    finally:
        server.stop()
    assert_problem(anonymous, 401)
    assert_problem(read_only, 403)
    assert allowed.status_code == 201 and allowed.json()["ids"] == ["DOTENV-AAA0001"]
    assert "No API keys configured" not in server.log()
    assert_nowhere(list(keys.all), {"the command line": argv, "the log": server.log()})


def _options(command: click.Command, path: str) -> Iterator[tuple[str, click.Parameter]]:
    for param in command.params:
        yield path, param
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")


def test_no_command_line_option_takes_a_secret() -> None:
    """Keys are never typed on a command line (where ``ps`` and shell history show them)."""
    command = typer.main.get_command(cli_app)
    found = [
        (path, name)
        for path, param in _options(command, "idmanager")
        for name in [*param.opts, *param.secondary_opts, param.name or ""]
        if SECRET_WORDS.search(name)
    ]
    assert found == [], found
    # The one option that can carry a password inside a URL has an environment variable.
    serve = command.commands["serve"]
    database = next(p for p in serve.params if p.name == "database_url")
    assert "IDMANAGER_DATABASE_URL" in (database.help or "")


# --- fuzzing with a read-only key changes nothing ---------------------------------------------


def test_fuzzing_with_a_read_only_key_changes_nothing(databases: Any, tmp_path: Path) -> None:
    """Schemathesis, positive and negative, with a read key: every write is refused."""
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("fuzz-read", server_env(url, keys), tmp_path)
    server.start()
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {keys.read}",
        "--checks",
        "all",
        # Valid writes are refused (403) by design: that is the point.
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        os.environ.get("IDMANAGER_TEST_SCHEMATHESIS_EXAMPLES", "15"),
        "--seed",
        "7",
        "--no-shrink",
        "--request-timeout",
        "10",
    ]
    began = time.monotonic()
    try:
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False
        )
    finally:
        server.stop()
    elapsed = time.monotonic() - began
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM id_managers), (SELECT count(*) FROM id_manager_audit)"
            )
        ).one()
    engine.dispose()
    generated = re.search(r"(\d+) generated", result.stdout)
    cases = int(generated.group(1)) if generated else 0
    record(
        "fuzzing with a read-only key",
        {
            "test_cases": cases,
            "seconds": round(elapsed, 1),
            "rows_after": list(rows),
            "exit_code": result.returncode,
        },
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert cases >= 100, report
    assert tuple(rows) == (0, 0), "a read-only key changed the database"
    assert_nowhere([keys.admin, keys.generate], {"the fuzzer's report": report})
