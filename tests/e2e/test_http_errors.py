"""Errors, outages, hostile input, docs, metrics and the OpenAPI document of a real server."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import sqlalchemy as sa

import idmanager

if TYPE_CHECKING:
    from conftest import Keys, PostgresDatabases, Server

PROBLEM = "application/problem+json"

HOSTILE_PREFIXES = [
    "CUS'; DROP TABLE id_managers;--",
    'CUS" OR 1=1',
    "Ωμέγα",
    "CUS-ÄÖÜ",
    "😀",
    "%00",
    "%2e%2e",
    "A" * 256,
    "A" * 5000,
    "_HEALTH_CHECK_",
    " ",
    "a b",
    "CUS%0ASET",
    "${jndi:ldap}",
    "<script>",
]


@pytest.mark.parametrize("bad", HOSTILE_PREFIXES, ids=range(len(HOSTILE_PREFIXES)))
def test_hostile_prefixes_never_yield_a_server_error(
    http: httpx.Client, keys: Keys, bad: str
) -> None:
    admin = keys.header("admin")
    calls = [
        ("POST", f"/api/v1/prefixes/{bad}/ids", None),
        ("GET", f"/api/v1/prefixes/{bad}", None),
        ("PUT", f"/api/v1/prefixes/{bad}", {"is_active": True}),
        ("POST", f"/api/v1/prefixes/{bad}/reset", {"reset_to": None}),
        ("GET", f"/api/v1/ids/{bad}-AAA0001", None),
    ]
    for method, url, body in calls:
        response = http.request(method, url, json=body, headers=admin)
        assert response.status_code < 500, (method, url, response.text)
        if "/ids/" not in url:  # '_HEALTH_CHECK_-AAA0001' is a well-formed ID
            assert response.status_code >= 400, (method, url, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == PROBLEM
    # The table is still there.
    assert http.get("/health").json()["status"] == "healthy"


@pytest.mark.parametrize(
    "params",
    [
        {"count": "9" * 400},
        {"count": "-" + "9" * 30},
        {"count": "1e9"},
        {"count": ""},
        {"scope": "x" * 256},
        {"scope": "tab\there"},
        {"scope": "nul\x00"},
    ],
)
def test_hostile_query_parameters(
    http: httpx.Client, keys: Keys, prefix: str, params: dict[str, str]
) -> None:
    response = http.post(
        f"/api/v1/prefixes/{prefix}/ids", params=params, headers=keys.header("admin")
    )
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"text"',
        b'{"reset_to": 5}',
        b'{"reset_to": {"$gt": ""}}',
        b'{"force": "yes please"}',
        b'{"reset_to": "' + b"A" * 2000 + b'"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"reset_to": "\xff\xfe"}',
    ],
)
def test_hostile_bodies(http: httpx.Client, keys: Keys, prefix: str, body: bytes) -> None:
    response = http.post(
        f"/api/v1/prefixes/{prefix}/reset",
        content=body,
        headers={**keys.header("admin"), "content-type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == PROBLEM


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    missing = http.get("/api/v2/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["title"] == "Not Found"
    wrong = http.delete("/api/v1/prefixes")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == PROBLEM
    assert "GET" in wrong.headers["allow"]


def test_docs_work_offline(http: httpx.Client, server: Server) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    html = page.text
    urls = re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", html)
    outside = [u for u in urls if not u.split("//", 1)[1].startswith(server.url.split("//")[1])]
    assert outside == [], f"/docs refers to outside hosts: {outside}"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert http.get(asset).status_code == 200, asset
    ui_schema_url = re.search(r"""url:\s*['"]([^'"]+)['"]""", html)
    assert ui_schema_url is not None
    ui_schema = http.get(ui_schema_url.group(1)).json()
    # The packaged Swagger UI renders OpenAPI 3.0: it gets a 3.0 rendering of the document.
    assert ui_schema["openapi"].startswith("3.0.")
    assert ui_schema["paths"].keys() == http.get("/openapi.json").json()["paths"].keys()
    assert '"type": "null"' not in str(ui_schema)


def test_openapi_documents_problems_and_auth(http: httpx.Client, max_bulk: int) -> None:
    schema = http.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = [
        (path, method, op) for path, item in schema["paths"].items() for method, op in item.items()
    ]
    assert len(operations) == 9
    for path, method, op in operations:
        assert op.get("description"), (path, method)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != "/health":
                assert list(response["content"]) == [PROBLEM], (path, method, status)
        if path.startswith("/api/"):
            assert {"401", "403", "422", "503"} <= op["responses"].keys(), (path, method)
    allocate = schema["paths"]["/api/v1/prefixes/{prefix}/ids"]["post"]
    count = next(p for p in allocate["parameters"] if p["name"] == "count")
    assert count["schema"]["maximum"] == max_bulk
    assert schema["components"]["schemas"]["IdsResponse"]["examples"]


def test_metrics(http: httpx.Client, keys: Keys, prefix: str) -> None:
    http.post(f"/api/v1/prefixes/{prefix}/ids", params={"count": 7}, headers=keys.header("admin"))
    http.post("/api/v1/prefixes/bad!/ids", headers=keys.header("admin"))
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert f'idmanager_ids_allocated_total{{prefix="{prefix}"}} 7.0' in text
    assert "idmanager_allocation_duration_seconds_bucket" in text
    assert re.search(r'idmanager_errors_total\{type="InvalidPrefixError"\} [1-9]', text)
    assert re.search(r"^idmanager_db_pool_checked_out \d", text, re.M)


def test_database_down_is_503_with_a_plain_message(
    start_server: Callable[..., Server], keys: Keys
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nowhere"
    server = start_server("pg-down", closed, keys)
    headers = keys.header("admin")
    assert httpx.get(server.url + "/health/live").status_code == 200
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["message"].startswith("ID Manager service error: ")
    response = httpx.post(server.url + "/api/v1/prefixes/DOWN/ids", headers=headers)
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"]
    body = response.json()
    assert body["type"] == "urn:idmanager:problem:storage-unavailable"
    # Plain: no driver, host or errno details.
    assert body["detail"] == "The database is unavailable or busy; try again shortly."
    for call in (
        ("GET", "/api/v1/prefixes"),
        ("GET", "/api/v1/prefixes/DOWN"),
        ("PUT", "/api/v1/prefixes/DOWN"),
        ("POST", "/api/v1/prefixes/DOWN/reset"),
        ("GET", "/api/v1/ids/DOWN-AAA0001"),
    ):
        answer = httpx.request(call[0], server.url + call[1], json={}, headers=headers)
        assert answer.status_code == 503, (call, answer.text)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_postgres_lock_wait_fails_with_503(
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
            assert blocked.headers["content-type"] == PROBLEM
            assert waited < 5  # lock_timeout is 1 s, not forever
    finally:
        engine.dispose()
    after = httpx.post(url, headers=keys.header("admin"))
    assert after.json()["ids"] == [f"{prefix}-AAA0002"]


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


def test_without_keys_everything_is_allowed_and_it_says_so(
    start_server: Callable[..., Server], workdir: Any, new_prefix: Callable[[str], str]
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
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:idmanager:problem:prefix-not-found"
    registered = httpx.put(f"{server.url}/api/v1/prefixes/{prefix}", json={})
    assert registered.status_code == 200
    allocated = httpx.post(f"{server.url}/api/v1/prefixes/{prefix}/ids")
    assert allocated.json()["ids"] == [f"{prefix}-AAA0001"]
    access = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert any(f"POST /api/v1/prefixes/{prefix}/ids" in r["message"] for r in access)


def test_a_body_over_the_limit_is_413_before_it_is_read(
    http: httpx.Client, keys: Keys, prefix: str
) -> None:
    response = http.put(
        f"/api/v1/prefixes/{prefix}",
        content=b'{"latest_id": "' + b"A" * 70_000 + b'"}',
        headers={**keys.header("admin"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "65,536 bytes" in response.json()["detail"]
    stats = http.get(f"/api/v1/prefixes/{prefix}", headers=keys.header("read"))
    assert stats.status_code == 404  # nothing was created
