"""Secrets: API keys and the database password never leave the server; they come only from the
environment or a file; the access rules hold whatever else happens. And the edges of issue 12:
the app on every address without keys, /health with a wrong database, keys refused without
being echoed, the client's path segments, SQLite read-only and missing folders, keys bound to
tenants, formats that would write another sequence's IDs, and the limits on creation.

The access matrix itself (every route x no key / wrong key / each role) is
``tests/e2e/test_http_auth.py``; here it is checked again *under* the reliability runs: in
``test_faults.py`` the three-replica run and the PostgreSQL outage carry clients with an
unknown key, a read-only key and no key, which must get 401/403 throughout (even while the
database is down), and those runs also check that no key appears in the servers' logs.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import sqlalchemy as sa
import typer
from sqlalchemy.orm import Session

import idmanager
from idmanager import IdFormat
from idmanager import client as client_module
from idmanager.api.security import fingerprint
from idmanager.application.use_cases import SyncIdManagerUseCases
from idmanager.cli import app as cli_app
from idmanager.compose import connect
from idmanager.domain.errors import AmbiguousFormatError
from idmanager.settings import ApiKey, Role, Settings

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
    env_file.write_text("IDMANAGER_API_KEYS=from-file-key-0123:admin\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().api_keys == {"from-file-key-0123": ApiKey(Role.ADMIN)}
    monkeypatch.setenv("IDMANAGER_API_KEYS", "from-env-key-01234:read")
    assert Settings().api_keys == {"from-env-key-01234": ApiKey(Role.READ)}


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


# --- issue 12: security and integrity at the edges --------------------------------------------
#
# Each test below is a row of the issue's table, tried against a real server (or the real
# command line) as the attacker or the careless operator did; the in-process breadth of the
# same checks is tests/unit/test_security_edges.py.

IDMANAGER = str(Path(sys.executable).with_name("idmanager"))
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def uvicorn(host: str) -> list[str]:
    """Return the command of plain uvicorn serving the app on ``host`` (port "{port}")."""
    return [
        sys.executable,
        *("-m", "uvicorn", "idmanager.api.app:create_app", "--factory"),
        *("--host", host, "--port", "{port}"),
    ]


def own_address() -> str:
    """Return this machine's first non-loopback IPv4 address (a peer that is not loopback)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert found, f"the tests need a non-loopback address on this machine:\n{out}"
    return found[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rows_of(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


# Row 6: plain uvicorn on 0.0.0.0 with no keys; DNS rebinding; a cross-site text/plain POST.


def test_plain_uvicorn_on_all_addresses_without_keys_serves_its_own_machine_only(
    databases: Any, tmp_path: Path
) -> None:
    url = databases.create("sqlite")
    server = ServerProcess("open", server_env(url, None), tmp_path, command=uvicorn("0.0.0.0"))
    server.start()
    address = own_address()
    outside = f"http://{address}:{server.port}"
    try:
        with httpx.Client(timeout=10) as client:
            # From the machine's other address: not loopback.
            far = {
                "allocate": client.post(
                    f"{outside}/api/v1/prefixes/OPEN/ids", headers={"Host": "127.0.0.1"}
                ),
                "list": client.get(f"{outside}/api/v1/prefixes", headers={"Host": "127.0.0.1"}),
                "metrics": client.get(f"{outside}/metrics", headers={"Host": "127.0.0.1"}),
            }
            # The same, naming the address it called: that name is not one of the service's.
            named = client.post(f"{outside}/api/v1/prefixes/OPEN/ids")
            # DNS rebinding: another site's name, resolved to 127.0.0.1 by its owner.
            rebound = client.post(
                f"{server.url}/api/v1/prefixes/OPEN/ids",
                params={"count": 10_000},
                headers={"Host": f"rebind.attacker.example:{server.port}"},
            )
            # The page of another site posting a form of text/plain, with and without Origin.
            cross_site = client.post(
                f"{server.url}/api/v1/prefixes/OPEN/ids",
                params={"count": 10_000},
                content=b"x=1",
                headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
            )
            text_plain = client.post(
                f"{server.url}/api/v1/prefixes/OPEN/ids",
                params={"count": 10_000},
                content=b"x=1",
                headers={"Content-Type": "text/plain"},
            )
            home = client.post(f"{server.url}/api/v1/prefixes/OPEN/ids")
    finally:
        server.stop()
    for response in far.values():
        assert_problem(response, 403)["type"].endswith("loopback-only")
    assert_problem(named, 400)["type"].endswith("host-not-allowed")
    assert_problem(rebound, 400)["type"].endswith("host-not-allowed")
    assert_problem(cross_site, 403)["type"].endswith("cross-site-request")
    assert_problem(text_plain, 415)["type"].endswith("unsupported-media-type")
    assert home.status_code == 201 and home.json()["ids"] == ["OPEN-AAA0001"]
    issued = rows_of(url, "SELECT last_value FROM id_managers WHERE prefix = 'OPEN'")
    record(
        "plain uvicorn on 0.0.0.0 without keys",
        {
            "peer": address,
            "from_another_address": sorted({r.status_code for r in far.values()}),
            "dns_rebinding": rebound.status_code,
            "cross_site_text_plain": cross_site.status_code,
            "text_plain_without_origin": text_plain.status_code,
            "ids_allocated_by_refused_requests": issued[0][0] - 1,
        },
    )
    assert issued == [(1,)]  # only the machine's own request allocated


# Row 7: /health when the database URL is wrong tells anonymous callers nothing of it.


@pytest.mark.parametrize(
    ("backend", "bad_url", "cause"),
    [
        (
            "mariadb",
            "mysql://idm_intruder_probe:wrong-pw@127.0.0.1:3306/idm_prod_books",
            "Access denied for user",
        ),
        (
            "postgresql",
            "postgresql://postgres@127.0.0.1:5432/idm_prod_books",
            'database "idm_prod_books" does not exist',
        ),
    ],
    ids=["mariadb access denied", "postgresql no such database"],
)
def test_health_tells_anonymous_callers_nothing_of_a_wrong_database(
    tmp_path: Path, backend: str, bad_url: str, cause: str
) -> None:
    keys = Keys()
    server = ServerProcess(f"health-{backend}", server_env(bad_url, keys), tmp_path)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            anonymous = client.get("/health")
            wrong_key = client.get("/health", headers=keys.header("wrong"))
            read_key = client.get("/health", headers=keys.header("read"))
    finally:
        server.stop()
    revealing = ["idm_prod_books", "idm_intruder", "3306", "5432", "127.0.0.1", "Access denied"]
    for response in (anonymous, wrong_key):
        assert response.status_code == 503
        report = response.json()
        assert report["message"] == "ID Manager service error: database unavailable"
        assert report["error_type"] is None and report["prefix_count"] is None
        assert not [word for word in revealing if word in response.text], response.text
    assert read_key.status_code == 503 and cause in read_key.json()["message"]
    assert cause in server.log()  # the operator reads the cause in the log
    record(
        f"health with a wrong {backend} URL",
        {"anonymous": anonymous.json()["message"], "read_key_sees_cause": True},
    )


# Row 9: keys shorter than 16 characters are refused; no key material in any refusal.


@pytest.mark.parametrize(
    ("form", "secret", "expected"),
    [
        ("env", "shortKey-7Qx:admin", "#1 is shorter than 16 characters"),
        ("env", '{"Zq81-longsecret-value-abc": admin}', "cannot be read"),
        ("file", "# keys\nok-key-0123456789ab:read\nshortKey-7Qx:admin\n", "#2 is shorter"),
    ],
    ids=["short key", "broken JSON", "short key in a file"],
)
def test_serve_refuses_bad_keys_in_one_line_that_shows_no_key(
    tmp_path: Path, form: str, secret: str, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
    env["IDMANAGER_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    if form == "env":
        env["IDMANAGER_API_KEYS"] = secret
    else:
        (tmp_path / "keys.txt").write_text(secret)
        env["IDMANAGER_API_KEYS_FILE"] = str(tmp_path / "keys.txt")
    result = subprocess.run(
        [IDMANAGER, "serve", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings:"), result.stderr
    assert expected in lines[0]
    for key in ("shortKey-7Qx", "Zq81-longsecret-value-abc", "ok-key-0123456789ab"):
        assert_nowhere([key], {"the refusal": result.stdout + result.stderr})
        assert key[:6] not in result.stdout + result.stderr


# Row 12: the client encodes every path segment.


def test_the_client_cannot_be_steered_to_another_route(databases: Any, tmp_path: Path) -> None:
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("client", server_env(url, keys), tmp_path)
    server.start()
    sent: list[bytes] = []

    class Recording(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.url.raw_path.split(b"?")[0])
            return super().handle_request(request)

    outcomes: dict[str, str] = {}
    try:
        httpx.put(
            f"{server.url}/api/v1/prefixes/MTX", json={}, headers=keys.header("admin"), timeout=10
        ).raise_for_status()
        with client_module.IdManagerClient(
            server.url, api_key=keys.read, transport=Recording(), retries=0
        ) as client:
            for name, call in {
                "parse_id ../prefixes/MTX": lambda: client.parse_id("../prefixes/MTX"),
                "parse_id ..": lambda: client.parse_id(".."),
                "stats ../ids/MTX-AAA0001": lambda: client.get_prefix_stats("../ids/MTX-AAA0001"),
                "stats MTX?scope=x": lambda: client.get_prefix_stats("MTX?scope=x"),
                "stats MTX#": lambda: client.get_prefix_stats("MTX#frag"),
            }.items():
                try:
                    outcomes[name] = repr(call())
                except idmanager.IdManagerError as exc:
                    outcomes[name] = type(exc).__name__
    finally:
        server.stop()
    assert sent == [
        b"/api/v1/ids/..%2Fprefixes%2FMTX",
        b"/api/v1/ids/%2E%2E",
        b"/api/v1/prefixes/..%2Fids%2FMTX-AAA0001",
        b"/api/v1/prefixes/MTX%3Fscope%3Dx",
        b"/api/v1/prefixes/MTX%23frag",
    ]
    # Read as what they are (an ID, a prefix), never as the route their text names.
    assert all(not outcome.startswith("SequenceStats") for outcome in outcomes.values()), outcomes
    assert "MTX" not in str(outcomes.get("parse_id ../prefixes/MTX")), outcomes
    record("client path segments", {"sent": [s.decode() for s in sent], "outcomes": outcomes})


# Row 13: SQLite read-only files serve reads; a missing folder fails at once; files 0600.


@pytest.fixture
def public_folder() -> Iterator[Path]:
    """A folder under /tmp that the ``nobody`` user can reach (pytest's own is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="idm-ro-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)


def run_cli(
    *args: str, user: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
    environment.update(env)
    return subprocess.run(
        [*(user or []), IDMANAGER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
        cwd="/tmp",
    )


def test_a_read_only_sqlite_file_serves_reads_and_refuses_writes(public_folder: Path) -> None:
    """As ``nobody`` (root writes through any mode): a 0444 file in a 0555 folder."""
    data = public_folder / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'ro.db'}"
    idmanager.migrate(url)
    assert run_cli("next", "RO", "-n", "3", "--database-url", url).returncode == 0
    with contextlib.closing(sqlite3.connect(data / "ro.db")) as connection:
        # A WAL database needs its -shm file written even to read: a read-only copy is
        # shipped in rollback-journal mode.
        assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    (data / "ro.db").chmod(0o444)
    data.chmod(0o555)
    shown = run_cli("show", "RO", "--json", "--database-url", url, user=AS_NOBODY)
    write = run_cli("next", "RO", "--database-url", url, user=AS_NOBODY)
    assert shown.returncode == 0, shown.stderr
    assert '"RO-AAA0003"' in shown.stdout
    assert write.returncode == 1
    assert write.stderr.strip().splitlines() == [
        "error: Database read-only: OperationalError: attempt to write a readonly database"
    ]
    # The HTTP service over the same file, as nobody.
    keys = Keys()
    env = server_env(f"sqlite+aiosqlite:///{data / 'ro.db'}", keys)
    workdir = public_folder / "server"
    workdir.mkdir()
    server = ServerProcess("read-only", env, workdir, command=[*AS_NOBODY, *uvicorn("127.0.0.1")])
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            read = client.get("/api/v1/prefixes/RO", headers=keys.header("read"))
            listing = client.get("/api/v1/prefixes", headers=keys.header("read"))
            allocate = client.post("/api/v1/prefixes/RO/ids", headers=keys.header("generate"))
    finally:
        server.stop()
    assert read.status_code == 200 and read.json()["latest_id"] == "RO-AAA0003", read.text
    assert listing.status_code == 200
    assert_problem(allocate, 503)
    assert "Database read-only" in server.log()
    record(
        "SQLite read-only file",
        {
            "cli_show": shown.returncode,
            "cli_next": write.stderr.strip(),
            "http_read": read.status_code,
            "http_allocate": allocate.status_code,
        },
    )


def test_a_missing_sqlite_folder_fails_at_start_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    url = f"sqlite:///{missing / 'ids.db'}"
    cli = run_cli("list", "--database-url", url)
    serve = run_cli(
        "serve", "--port", "1", IDMANAGER_DATABASE_URL=f"sqlite+aiosqlite:///{missing / 'x.db'}"
    )
    for result in (cli, serve):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert lines == [f"error: The SQLite database's folder {missing} does not exist"], lines
    assert not (tmp_path / "no").exists()


def test_new_sqlite_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert run_cli("migrate", "--database-url", url).returncode == 0
    assert run_cli("next", "NEW", "--database-url", url).returncode == 0
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:  # in WAL mode: the -wal and -shm files exist meanwhile
        connection.execute(sa.text("UPDATE id_managers SET last_value = last_value"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("new.db*")}
    engine.dispose()
    assert {"new.db", "new.db-wal", "new.db-shm"} <= modes.keys(), modes
    assert set(modes.values()) == {0o600}, {k: oct(v) for k, v in modes.items()}


# Row 14: keys bound to scopes see and change only those, on every route.


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_key_bound_to_tenants_sees_and_changes_only_theirs(
    databases: Any, tmp_path: Path, backend: str
) -> None:
    keys = Keys()
    bound = {role: f"t-{role[0]}-" + secrets.token_urlsafe(18) for role in ("read", "generate")}
    extra = ",".join(f"{key}:{role}:acme|shop-*" for role, key in bound.items())
    url = databases.create(backend)
    env = server_env(url, keys)
    env["IDMANAGER_API_KEYS"] += "," + extra
    server = ServerProcess(f"tenants-{backend}", env, tmp_path)
    server.start()
    scopes = ["acme", "ACME", "Acme", "shop-1", "SHOP-2", "shop_1", "acme2", "globex"]
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for scope in scopes:
                response = client.post(
                    "/api/v1/prefixes/CUS/ids",
                    params={"scope": scope},
                    headers=keys.header("admin"),
                )
                assert response.status_code == 201, response.text
            read, generate = bearer(bound["read"]), bearer(bound["generate"])
            listed = client.get("/api/v1/prefixes", headers=read).json()["items"]
            audit = client.get("/api/v1/audit", headers=read).json()["items"]
            others = [s for s in scopes if s not in ("acme", "shop-1")]
            refused = [
                client.post("/api/v1/prefixes/CUS/ids", params={"scope": s}, headers=generate)
                for s in others
            ]
            refused += [
                client.get(path, params={"scope": "globex"}, headers=read)
                for path in ("/api/v1/prefixes", "/api/v1/prefixes/CUS", "/api/v1/audit")
            ]
            refused.append(client.get("/metrics", headers=read))
            own = client.post(
                "/api/v1/prefixes/CUS/ids", params={"scope": "acme"}, headers=generate
            )
    finally:
        server.stop()
    seen = sorted({item["scope"] for item in listed})
    seen_audit = sorted({entry["scope"] for entry in audit})
    record(
        f"keys bound to tenants ({backend})",
        {
            "scopes": scopes,
            "listed": seen,
            "audit": seen_audit,
            "refused": sorted({r.status_code for r in refused}),
        },
    )
    for response in refused:
        assert_problem(response, 403)
    assert own.status_code == 201 and own.json()["ids"] == ["CUS-AAA0002"]
    assert seen == ["acme", "shop-1"], seen
    assert seen_audit == ["acme", "shop-1"], seen_audit


# Row 2: no two sequences write one ID.

AMBIGUOUS = [
    # (first, its format, second, its format, the ID both would write)
    ("COL", {"separator": "", "letter_width": 3}, "COLA", {"letter_width": 2}, "COLAAA0001"),
    (
        "D",
        {"separator": "", "letter_width": 0, "digit_width": 5},
        "D0",
        {"letter_width": 0},
        "D00001",
    ),
]


def test_no_two_sequences_write_one_id_over_http(databases: Any, tmp_path: Path) -> None:
    """The issue's two cases: registered, or changed to, a format that writes another's IDs."""
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("ambiguous", server_env(url, keys), tmp_path)
    server.start()
    answers: dict[str, int] = {}
    try:
        with httpx.Client(base_url=server.url, headers=keys.header("admin"), timeout=10) as client:
            for first, first_format, second, second_format, shared in AMBIGUOUS:
                ambiguous = {"format": {**second_format, "separator": ""}}
                first_put = client.put(f"/api/v1/prefixes/{first}", json={"format": first_format})
                assert first_put.status_code == 200, first_put.text
                registered = client.put(f"/api/v1/prefixes/{second}", json=ambiguous)
                # Registered with a separator, then changed to the ambiguous format.
                dashed = {"format": {**second_format, "separator": "-"}}
                assert client.put(f"/api/v1/prefixes/{second}", json=dashed).status_code == 200
                changed = client.put(f"/api/v1/prefixes/{second}", json=ambiguous)
                for name, response in (("registered", registered), ("changed", changed)):
                    problem = assert_problem(response, 409)
                    assert problem["type"].endswith("ambiguous-format")
                    assert shared in problem["detail"], problem
                    answers[f"{second} {name}"] = response.status_code
                first_id = client.post(f"/api/v1/prefixes/{first}/ids").json()["ids"]
                second_id = client.post(f"/api/v1/prefixes/{second}/ids").json()["ids"]
                assert first_id == [shared] and second_id != [shared]
    finally:
        server.stop()
    record("ambiguous formats over HTTP", {"answers": answers})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_prefixes_that_overlap_are_found_on_every_backend(databases: Any, backend: str) -> None:
    """The overlapping sequences are looked up in SQL: '_' and '%' are not wildcards there."""
    url = databases.create(backend)
    use_cases = connect(idmanager.create_engine(url, poolclass=sa.pool.NullPool))
    assert isinstance(use_cases, SyncIdManagerUseCases)

    def register(prefix: str, fmt: IdFormat, scope: str = "") -> None:
        use_cases.run(lambda s: s.configure_prefix(prefix, scope=scope, fmt=fmt))

    register("C_L", IdFormat("", 3, 4))
    register("CXLA", IdFormat("", 2, 4))  # 'C_L' is no LIKE pattern: no overlap
    register("C_LA", IdFormat("", 2, 4), scope="other")  # another scope
    with pytest.raises(AmbiguousFormatError, match="C_LAAA0001"):
        register("C_LA", IdFormat("", 2, 4))
    with pytest.raises(AmbiguousFormatError, match="CXLAAA0001"):
        register("C", IdFormat("", 5, 4))  # the shorter one registered after the longer
    register("C", IdFormat("", 0, 4))
    # Created on first use, in the statement that allocates (MariaDB) or after it: refused
    # all the same, and nothing is left behind.
    no_separator = use_cases.with_options(default_format=IdFormat("", 2, 4))
    with pytest.raises(AmbiguousFormatError, match="C_LAAA0001"):
        no_separator.allocate("C_LA")
    assert rows_of(url, "SELECT count(*) FROM id_managers") == [(4,)]


# Row 4: limits on what callers create; every creation is named.


def test_creation_needs_admin_stays_under_the_cap_and_inside_the_window_and_is_named(
    databases: Any, tmp_path: Path
) -> None:
    """Block cache on: creation still goes through the database, checked and audited."""
    keys = Keys()
    url = databases.create("postgresql")
    env = server_env(url, keys, create_role="admin", max_sequences="12", block_cache="true")
    server = ServerProcess("creation", env, tmp_path)
    server.start()
    today = datetime.now(UTC).date()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            admin, generate = keys.header("admin"), keys.header("generate")

            def allocate(prefix: str, headers: dict[str, str], **params: str) -> httpx.Response:
                return client.post(f"/api/v1/prefixes/{prefix}/ids", params=params, headers=headers)

            by_generate = [
                allocate("NEWNAME", generate),
                allocate("NEWNAME", generate, scope="tenant-x"),
                allocate("INV{YYYY}", generate, date=today.isoformat()),
            ]
            far_dates = [
                allocate("INV{YYYY}", admin, date="0001-01-01"),
                allocate("INV{YYYY}", admin, date="9999-12-31"),
            ]
            created = [allocate(f"MADE{n}", admin, scope=f"t{n % 3}") for n in range(10)]
            created += [allocate("INV{YYYY}", admin, date=today.isoformat())]
            created += [
                allocate("INV{YYYY}", admin, date=(today - timedelta(days=380)).isoformat())
            ]
            over = allocate("ONEMORE", admin)
            cached = [allocate("MADE1", generate, scope="t1") for _ in range(5)]
    finally:
        server.stop()
    for response in by_generate:
        assert_problem(response, 404)["type"].endswith("prefix-not-found")
    for response in far_dates:
        assert "400 days" in assert_problem(response, 422)["detail"]
    assert [r.status_code for r in created] == [201] * 12, [r.text for r in created]
    assert "12 sequences" in assert_problem(over, 409)["detail"]
    assert [r.json()["ids"][0] for r in cached] == [f"MADE1-AAA000{n}" for n in range(2, 7)]
    rows = rows_of(url, "SELECT scope, prefix, created_by FROM id_managers")
    audit = rows_of(
        url, "SELECT scope, prefix, actor FROM id_manager_audit WHERE action = 'create'"
    )
    actor = f"api-key:{fingerprint(keys.admin)}"
    record(
        "creation limits",
        {
            "generate_key_new_name_scope_period": sorted({r.status_code for r in by_generate}),
            "years_0001_and_9999": sorted({r.status_code for r in far_dates}),
            "created": len(rows),
            "past_the_cap": over.status_code,
            "rows_without_creator": sum(1 for r in rows if r[2] != actor),
            "rows_without_create_audit": len({r[:2] for r in rows} - {a[:2] for a in audit}),
        },
    )
    assert len(rows) == 12
    assert {r[2] for r in rows} == {actor}
    assert sorted(a[:2] for a in audit) == sorted(r[:2] for r in rows)
    assert {a[2] for a in audit} == {actor}
