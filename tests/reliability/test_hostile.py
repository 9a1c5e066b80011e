"""Hostile HTTP input: SQL fragments, unicode and control characters, oversize everything.

Each request must come back 4xx as ``application/problem+json``, reveal no internals, and
change nothing: the tables, their row counts and every sequence are checked after each one.

Covered elsewhere, not repeated here: hostile *prefixes* in every route, hostile counts and
JSON bodies (``tests/e2e/test_http_errors.py``); the hypothesis fuzz of prefix validation and
ID parsing, where only the project's own errors may come out (``tests/unit/test_format.py``);
schemathesis over the OpenAPI document in positive *and* negative mode, with every check
(``tests/e2e/test_http_schemathesis.py``; its ``--mode`` is ``all``).
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import sqlalchemy as sa

import idmanager

from .http_load import PROBLEM, Keys, ServerProcess, assert_problem, record, server_env

SQL = "CUS'; DROP TABLE id_managers;--"
INTERNALS = ("Traceback", "sqlalchemy", "asyncpg", "psycopg", 'File "', "postgresql://")


class Hostile(NamedTuple):
    """One hostile request: method, path (sent as is), query, raw body."""

    method: str
    path: str
    params: dict[str, str] | None = None
    body: bytes | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


CASES: dict[str, Hostile] = {
    # SQL fragments in scopes, on every route that takes one.
    "scope sql: allocate": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": SQL}),
    "scope sql: stats": Hostile("GET", "/api/v1/prefixes/LEGIT", {"scope": SQL}),
    "scope sql: configure": Hostile("PUT", "/api/v1/prefixes/FRESH", {"scope": SQL}, b"{}"),
    "scope sql: reset": Hostile(
        "POST", "/api/v1/prefixes/LEGIT/reset", {"scope": SQL}, b'{"dry_run": true}'
    ),
    "scope sql: read id": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001", {"scope": SQL}),
    "scope sql: list filter": Hostile("GET", "/api/v1/prefixes", {"scope": "' OR '1'='1"}),
    "scope like-pattern": Hostile("GET", "/api/v1/prefixes", {"scope": "%' OR scope LIKE '%"}),
    # SQL fragments in IDs and in the bodies that carry IDs.
    "id sql": Hostile("GET", f"/api/v1/ids/{SQL}"),
    "id sql after a valid id": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001'; DELETE FROM x;--"),
    "id or-true": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001' OR '1'='1"),
    "expected-prefix sql": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001", {"prefix": SQL}),
    "reset_to sql": Hostile(
        "POST", "/api/v1/prefixes/LEGIT/reset", body=_json({"reset_to": SQL, "dry_run": True})
    ),
    "latest_id sql": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=_json({"latest_id": f"FRESH-AAA0001{SQL}"})
    ),
    "separator sql": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=_json({"format": {"separator": SQL}})
    ),
    # Unicode that looks like, or upper-cases to, ASCII; invisible and control characters.
    "prefix long s": Hostile("POST", "/api/v1/prefixes/cu\u017f/ids"),
    "prefix sharp s": Hostile("POST", "/api/v1/prefixes/\u00df/ids"),
    "prefix dotted I": Hostile("POST", "/api/v1/prefixes/\u0130D/ids"),
    "prefix fullwidth": Hostile("POST", "/api/v1/prefixes/\uff23\uff35\uff33/ids"),
    "prefix cyrillic": Hostile("POST", "/api/v1/prefixes/\u0421US/ids"),
    "prefix zero-width": Hostile("POST", "/api/v1/prefixes/LEGIT\u200b/ids"),
    "prefix rtl override": Hostile("POST", "/api/v1/prefixes/LEGIT\u202e/ids"),
    "prefix escape": Hostile("POST", "/api/v1/prefixes/%1B[31mLEGIT/ids"),
    "prefix inner tab": Hostile("POST", "/api/v1/prefixes/LE%09GIT/ids"),
    "prefix crlf": Hostile("POST", "/api/v1/prefixes/LEGIT%0D%0ASet-Cookie:%20x=1/ids"),
    "prefix del": Hostile("POST", "/api/v1/prefixes/LEGIT%7F/ids"),
    "prefix surrogate": Hostile("POST", "/api/v1/prefixes/%ED%A0%80/ids"),
    "prefix overlong slash": Hostile("POST", "/api/v1/prefixes/%C0%AF/ids"),
    "prefix bad utf-8": Hostile("POST", "/api/v1/prefixes/%FF%FE/ids"),
    "id fullwidth digits": Hostile("GET", "/api/v1/ids/LEGIT-AAA\uff10\uff10\uff10\uff11"),
    "id arabic digits": Hostile("GET", "/api/v1/ids/LEGIT-AAA\u0661"),
    "id greek letters": Hostile("GET", "/api/v1/ids/LEGIT-\u0391\u0391\u03910001"),
    "id ligature": Hostile("GET", "/api/v1/ids/LEGIT-\ufb00A0001"),
    "id nul": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001%00"),
    "id crlf": Hostile("GET", "/api/v1/ids/LEGIT-AAA0001%0D%0ASet-Cookie:%20x=1"),
    "id bad utf-8": Hostile("GET", "/api/v1/ids/%FF%FE"),
    "scope nul": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "acme\x00"}),
    "scope newline": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "acme\nx"}),
    "scope fullwidth": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "\uff41cme"}),
    "scope rtl override": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "acme\u202e"}),
    "scope path": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "../acme"}),
    "body nul separator": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=b'{"format": {"separator": "\\u0000"}}'
    ),
    "body lone surrogate": Hostile(
        "POST", "/api/v1/prefixes/LEGIT/reset", body=b'{"reset_to": "\\ud800", "dry_run": true}'
    ),
    "body NaN": Hostile("PUT", "/api/v1/prefixes/FRESH", body=b'{"latest_id": NaN}'),
    # Types that a lax parser would coerce: a boolean is not a number, a number not a flag.
    "body bool as digit width": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=b'{"format": {"digit_width": true}}'
    ),
    "body bool as letter width": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=b'{"format": {"letter_width": false}}'
    ),
    "body number as force": Hostile(
        "POST", "/api/v1/prefixes/LEGIT/reset", body=b'{"force": 1, "dry_run": true}'
    ),
    # Oversize parameters and bodies (that still reach the application).
    "prefix 60 KB": Hostile("POST", "/api/v1/prefixes/" + "A" * 60_000 + "/ids"),
    "scope 60 KB": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"scope": "a" * 60_000}),
    "id 60 KB": Hostile("GET", "/api/v1/ids/LEGIT-" + "9" * 60_000),
    "id letters 60 KB": Hostile("GET", "/api/v1/ids/LEGIT-" + "A" * 60_000 + "1"),
    "count 4000 digits": Hostile("POST", "/api/v1/prefixes/LEGIT/ids", {"count": "9" * 4000}),
    "limit 10^30": Hostile("GET", "/api/v1/prefixes", {"limit": str(10**30)}),
    "skip past 64 bits": Hostile("GET", "/api/v1/prefixes", {"skip": str(2**64)}),
    "body 5 MB string": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=_json({"latest_id": "A" * 5_000_000})
    ),
    "body 2 MB of keys": Hostile(
        "PUT", "/api/v1/prefixes/FRESH", body=_json({f"k{i}": i for i in range(150_000)})
    ),
    "body 5 MB array": Hostile(
        "POST", "/api/v1/prefixes/LEGIT/reset", body=b"[" + b"0," * 2_500_000 + b"0]"
    ),
}


class Snapshot(NamedTuple):
    tables: frozenset[str]
    rows: tuple[int, int]
    sequences: tuple[tuple[str, str, int, bool, str, int, int], ...]


@pytest.fixture(scope="module")
def hostile(
    databases: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Keys, sa.Engine]]:
    """A server on a database holding LEGIT (3 IDs, in two scopes) and FRESH (registered)."""
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("hostile", server_env(url, keys), tmp_path_factory.mktemp("hostile"))
    server.start()
    admin = keys.header("admin")
    for scope in ("", "acme"):
        response = httpx.post(
            f"{server.url}/api/v1/prefixes/LEGIT/ids",
            params={"count": 3, "scope": scope},
            headers=admin,
        )
        assert response.status_code == 201, response.text
    assert httpx.put(f"{server.url}/api/v1/prefixes/FRESH", json={}, headers=admin).is_success
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield server, keys, engine
    finally:
        engine.dispose()
        server.stop()


def snapshot(engine: sa.Engine) -> Snapshot:
    with engine.connect() as connection:
        tables = frozenset(sa.inspect(connection).get_table_names())
        rows = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM id_managers), (SELECT count(*) FROM id_manager_audit)"
            )
        ).one()
        sequences = connection.execute(
            sa.text(
                "SELECT scope, prefix, last_value, is_active, separator, letter_width, "
                "digit_width FROM id_managers ORDER BY scope, prefix"
            )
        ).all()
    return Snapshot(tables, (int(rows[0]), int(rows[1])), tuple(tuple(s) for s in sequences))


STATUSES: Counter[int] = Counter()


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_request_is_refused_and_changes_nothing(
    hostile: tuple[ServerProcess, Keys, sa.Engine], case: str
) -> None:
    server, keys, engine = hostile
    before = snapshot(engine)
    assert {"id_managers", "id_manager_audit"} <= before.tables
    request = CASES[case]
    headers = {**keys.header("admin"), "content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.request(
            request.method,
            request.path,
            params=request.params,
            content=request.body,
            headers=headers,
        )
    STATUSES[response.status_code] += 1
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    problem = assert_problem(response, response.status_code)
    assert not any(word in response.text for word in INTERNALS), response.text[:300]
    # The answer may quote the path (``instance``), never amplify it.
    sent = len(request.path) + len(str(request.params or "")) + len(request.body or b"")
    assert len(response.content) <= sent + 4096, "the answer is larger than the question"
    assert problem["status"] == response.status_code
    assert snapshot(engine) == before, "a refused request changed the database"


def test_oversize_requests_are_refused_before_the_application(
    hostile: tuple[ServerProcess, Keys, sa.Engine],
) -> None:
    """Past the HTTP parser's limits, uvicorn itself answers 400 (plain text) or hangs up."""
    server, keys, engine = hostile
    before = snapshot(engine)
    token = keys.admin.encode()
    raw = {
        "request line 200 KB": b"POST /api/v1/prefixes/" + b"A" * 200_000 + b"/ids HTTP/1.1\r\n"
        b"Host: x\r\nAuthorization: Bearer " + token + b"\r\nContent-Length: 0\r\n\r\n",
        "header 200 KB": b"GET /api/v1/prefixes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"k" * 200_000
        + b"\r\n\r\n",
        "5,000 headers": b"GET /api/v1/prefixes HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        + b"\r\n",
        "body shorter than its length": b"PUT /api/v1/prefixes/FRESH HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n{",
        "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n",
    }
    answers = {}
    for name, payload in raw.items():
        answers[name] = _send_raw(server.port, payload)
    record(
        "hostile input",
        {
            "requests_through_the_application": sum(STATUSES.values()),
            "statuses": {str(k): v for k, v in sorted(STATUSES.items())},
            "server_errors": sum(v for k, v in STATUSES.items() if k >= 500),
            "refused_by_the_http_parser": answers,
            "rows_before_after": [list(before.rows), list(snapshot(engine).rows)],
        },
    )
    for name, status in answers.items():
        # A status line of 4xx, or the connection closed (None): never 5xx, never a hang.
        assert status is None or 400 <= status < 500, (name, status)
    health = httpx.get(server.url + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert snapshot(engine) == before
    # The sequences carry on where they were.
    after = httpx.post(
        f"{server.url}/api/v1/prefixes/LEGIT/ids", headers=keys.header("generate"), timeout=5
    )
    assert after.json()["ids"] == ["LEGIT-AAA0004"]
    assert after.headers["content-type"] != PROBLEM


def _send_raw(port: int, payload: bytes, wait: float = 3.0) -> int | None:
    """Send bytes as they are and return the answer's status, None if the server hung up.

    A server that waits for more (the truncated body) is fine as long as it does not answer
    with 5xx: the client gives up after ``wait`` seconds and closes the connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(payload)
            head = sock.recv(64)
        except (TimeoutError, ConnectionError):
            return None
    if not head.startswith(b"HTTP/1.1 "):
        return None
    return int(head.split()[1])


def test_the_log_stays_readable(hostile: tuple[ServerProcess, Keys, sa.Engine]) -> None:
    """Control characters sent in paths reach the log escaped, not as raw terminal codes."""
    server, _, _ = hostile
    log = server.log()
    assert "\x1b[31m" not in log and "\r\nSet-Cookie" not in log
    assert "Traceback" not in log, log[-3000:]
    assert Path(server.log_path).stat().st_size < 5_000_000, "the log echoes oversize input"
