"""Faults only a real server over a real database shows: a database that is down, a sequence
locked past the wait allowed, connections killed under the pool, and a server run without keys.

Every problem kind of every route, hostile input, the body limit, docs and OpenAPI are the
in-process tier's (``tests/unit/test_http.py``).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import sqlalchemy as sa

import idmanager
from idmanager.problems import PROBLEM_JSON, kind

if TYPE_CHECKING:
    from conftest import Keys, PostgresDatabases, Server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_database_that_is_down_is_a_plain_503(
    start_server: Callable[..., Server], keys: Keys
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    server = start_server("pg-down", closed, keys)
    headers = keys.header("admin")
    # The process serves, and says what is wrong.
    assert httpx.get(server.url + "/health/live").status_code == 200
    health = httpx.get(server.url + "/health", headers=keys.header("read"))
    assert health.status_code == 503
    report = health.json()
    assert report["status"] == "unhealthy"
    assert report["message"].startswith("ID Manager service error: ")
    assert report["error_type"] == "StorageError"
    unavailable = kind("storage-unavailable")
    for method, path in (
        ("POST", "/api/v1/prefixes/DOWN/ids"),
        ("GET", "/api/v1/prefixes"),
        ("GET", "/api/v1/prefixes/DOWN"),
        ("PUT", "/api/v1/prefixes/DOWN"),
        ("POST", "/api/v1/prefixes/DOWN/reset"),
        ("GET", "/api/v1/ids/DOWN-AAA0001"),
        ("GET", "/api/v1/audit"),
    ):
        response = httpx.request(method, server.url + path, json={}, headers=headers)
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.headers["retry-after"] == str(unavailable.retry_after)
        # The driver's refusal is classified as an outage, and told in plain words: no
        # driver, host or errno.
        assert response.json()["type"] == unavailable.type
        assert response.json()["detail"] == unavailable.example


def test_postgres_lock_wait_is_a_busy_sequence(
    servers: dict[str, Server], database_urls: dict[str, str], keys: Keys, prefix: str
) -> None:
    url = servers["postgresql"].url + f"/api/v1/prefixes/{prefix}/ids"
    assert httpx.post(url, headers=keys.header("admin")).status_code == 201
    engine = idmanager.create_engine(database_urls["postgresql"], poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(
                sa.text("SELECT 1 FROM id_managers WHERE prefix = :p FOR UPDATE"), {"p": prefix}
            )
            started = time.monotonic()
            blocked = httpx.post(url, headers=keys.header("admin"), timeout=30)
            waited = time.monotonic() - started
            assert blocked.status_code == 503, blocked.text
            assert blocked.headers["content-type"] == PROBLEM_JSON
            # The database is up: the sequence is busy, not the service unavailable.
            assert blocked.json()["type"] == kind("sequence-busy").type
            assert waited < 5  # lock_timeout is 1 s, not forever
    finally:
        engine.dispose()
    after = httpx.post(url, headers=keys.header("admin"))
    assert after.json()["ids"] == [f"{prefix}-AAA0002"]  # the refused request took nothing


def test_postgres_connections_killed_service_resumes(
    servers: dict[str, Server],
    database_urls: dict[str, str],
    pg_databases: PostgresDatabases,
    keys: Keys,
    prefix: str,
) -> None:
    url = servers["postgresql"].url + f"/api/v1/prefixes/{prefix}/ids"
    with httpx.Client(headers=keys.header("admin")) as client:
        for _ in range(5):  # fill the pool
            assert client.post(url).status_code == 201
        name = sa.engine.make_url(database_urls["postgresql"]).database
        with pg_databases.admin.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar()
        assert killed
        statuses = [client.post(url).status_code for _ in range(6)]
    # At most the first request after the outage fails; the service then resumes by itself.
    assert statuses[1:] == [201] * 5, statuses
    assert statuses[0] in (201, 503)


def test_without_keys_everything_is_allowed_and_the_json_log_says_so(
    start_server: Callable[..., Server], workdir: Path, new_prefix: Callable[[str], str]
) -> None:
    server = start_server(
        "open",
        f"sqlite+aiosqlite:///{workdir / 'open.db'}",
        None,
        create_missing="false",
        log_format="json",
    )
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    warning = next(r for r in records if "No API keys configured" in r["message"])
    assert warning["level"] == "WARNING"
    prefix = new_prefix("O")
    missing = httpx.post(f"{server.url}/api/v1/prefixes/{prefix}/ids")
    assert missing.json()["type"] == kind("prefix-not-found").type
    assert httpx.put(f"{server.url}/api/v1/prefixes/{prefix}", json={}).status_code == 200
    allocated = httpx.post(f"{server.url}/api/v1/prefixes/{prefix}/ids")
    assert allocated.json()["ids"] == [f"{prefix}-AAA0001"]
    # uvicorn's access log is JSON too.
    access = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any(f"POST /api/v1/prefixes/{prefix}/ids" in r["message"] for r in access)
