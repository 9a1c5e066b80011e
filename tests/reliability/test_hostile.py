"""Hostile HTTP input: SQL fragments, unicode and control characters, oversize everything.

Each request must come back 4xx as ``application/problem+json``, reveal no internals, and
change nothing: the tables, their row counts and every sequence are checked after each one.
Then the floods and slow clients of issue 12: a chunked body with no key, redirects built
from the Host header, floods of /health and /metrics, thousands of spellings of a prefix under
the block cache, and connections that send their headers slowly or not at all.

Covered elsewhere, not repeated here: hostile *prefixes* in every route, hostile counts and
JSON bodies (``tests/e2e/test_http_errors.py``); the hypothesis fuzz of prefix validation and
ID parsing, where only the project's own errors may come out (``tests/unit/test_format.py``);
schemathesis over the OpenAPI document in positive *and* negative mode, with every check
(``tests/e2e/test_http_schemathesis.py``; its ``--mode`` is ``all``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import sqlalchemy as sa

import idmanager
from idmanager import format_id, parse_id

from .http_load import PROBLEM, Keys, ServerProcess, assert_problem, record, server_env

SQL = "CUS'; DROP TABLE id_managers;--"
# Longest an allocation may take while other requests flood the server: a stall, not a
# speed bound (before the fixes of issue 12, floods held allocations up for 5 to 23 s).
STALL_S = 4.0
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
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        admin = keys.header("admin")
        for scope in ("", "acme"):
            response = httpx.post(
                f"{server.url}/api/v1/prefixes/LEGIT/ids",
                params={"count": 3, "scope": scope},
                headers=admin,
            )
            assert response.status_code == 201, response.text
        response = httpx.put(f"{server.url}/api/v1/prefixes/FRESH", json={}, headers=admin)
        assert response.is_success, response.text
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
        b"Host: 127.0.0.1\r\nAuthorization: Bearer " + token + b"\r\nContent-Length: 0\r\n\r\n",
        "header 200 KB": b"GET /api/v1/prefixes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"Authorization: Bearer "
        + b"k" * 200_000
        + b"\r\n\r\n",
        "5,000 headers": b"GET /api/v1/prefixes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
        + b"\r\n",
        "body shorter than its length": b"PUT /api/v1/prefixes/FRESH HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nAuthorization: Bearer "
        + token
        + b"\r\nContent-Type: application/json\r\n"
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


# --- issue 12: what a hostile caller could still do -------------------------------------------
#
# Each test below is a row of the table, against a real server; the in-process
# breadth of the same checks is tests/unit/test_security_edges.py.


def rss_mb(server: ServerProcess) -> float:
    """Return the resident memory of the server process, in MB."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found, status
    return int(found.group(1)) / 1024


# Row 1: a chunked body (no Content-Length) and no key.


def test_a_chunked_body_without_a_key_is_cut_at_the_limit(
    hostile: tuple[ServerProcess, Keys, sa.Engine],
) -> None:
    """The issue's 800 MiB took the server to 2.6 GB before its 401; now 413 at 64 KiB."""
    server, _, engine = hostile
    before, memory_before = snapshot(engine), rss_mb(server)
    offered = 100 * 2**20
    began = time.monotonic()
    sent, answer = _stream_chunked(server.port, "/api/v1/prefixes/FRESH", offered)
    took = time.monotonic() - began
    memory_after = rss_mb(server)
    record(
        "chunked body without a key",
        {
            "offered_bytes": offered,
            "sent_before_the_answer": sent,
            "answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
            "seconds": round(took, 2),
            "server_rss_mb_before_after": [round(memory_before, 1), round(memory_after, 1)],
        },
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"body-too-large" in answer and b"connection: close" in answer.lower()
    # What the kernel's buffers took before the server hung up; it read 64 KiB of it.
    assert sent < 16 * 2**20, sent
    assert memory_after - memory_before < 20, (memory_before, memory_after)
    assert snapshot(engine) == before


def _stream_chunked(port: int, path: str, offered: int) -> tuple[int, bytes]:
    """Send a chunked PUT of up to ``offered`` bytes, no key; return what was sent before the
    server answered (or hung up), and its answer."""
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"10000\r\n" + b"{" + b" " * (2**16 - 1) + b"\r\n"  # chunks of 64 KiB
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        pending = memoryview(piece)
        deadline = time.monotonic() + 30
        while sent < offered and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    done = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += done
                pending = pending[done:] or memoryview(piece)
        sock.setblocking(True)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return sent, answer


# Row 11: no redirect built from the Host header.


def test_no_redirect_is_built_from_the_host_header(
    hostile: tuple[ServerProcess, Keys, sa.Engine],
) -> None:
    server, keys, engine = hostile
    before = snapshot(engine)
    answers = {}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for host in ("evil.example", f"127.0.0.1:{server.port}"):
            for path in ("/api/v1/prefixes/LEGIT/ids/", "/api/v1/prefixes/", "/docs/"):
                method = "POST" if path.endswith("ids/") else "GET"
                response = client.request(
                    method, path, headers={**keys.header("admin"), "Host": host}
                )
                answers[f"{method} {path} Host {host.split(':')[0]}"] = response.status_code
                assert not 300 <= response.status_code < 400, (host, path, response.headers)
                assert "location" not in response.headers
                assert "evil.example/" not in response.text
    record("no redirect from the Host header", answers)
    assert snapshot(engine) == before


# Rows 3 and 8: floods of /health and /metrics do not take the pool or stall allocations.


@pytest.fixture(scope="module")
def busy(
    databases: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Keys, str]]:
    """A server on PostgreSQL with a pool of 4 connections, and a registered FLOOD prefix."""
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("busy", server_env(url, keys), tmp_path_factory.mktemp("busy"))
    server.start()
    try:
        admin = keys.header("admin")
        assert httpx.post(f"{server.url}/api/v1/prefixes/FLOOD/ids", headers=admin).is_success
        yield server, keys, url
    finally:
        server.stop()


def _latencies(url: str, headers: dict[str, str], seconds: float) -> list[float]:
    """Allocate one ID at a time for ``seconds``; return each request's latency."""
    found = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while time.monotonic() < deadline:
            began = time.monotonic()
            response = client.post("/api/v1/prefixes/FLOOD/ids")
            found.append(time.monotonic() - began)
            assert response.status_code == 201, response.text
    return found


def _figures(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "allocations": len(ordered),
        "p50_s": round(ordered[len(ordered) // 2], 3),
        "p95_s": round(ordered[int(len(ordered) * 0.95)], 3),
        "max_s": round(ordered[-1], 3),
    }


class Flood:
    """``concurrency`` requests to ``path`` kept in flight at once, until stopped."""

    def __init__(self, url: str, path: str, concurrency: int, headers: dict[str, str]) -> None:
        self.url, self.path, self.concurrency, self.headers = url, path, concurrency, headers
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.bodies: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        time.sleep(0.3)  # in full flow before anything is measured
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the flood did not stop"

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=60, limits=limits
        ) as client:

            async def loop() -> None:
                while not self._stop.is_set():
                    try:
                        response = await client.get(self.path)
                    except httpx.TransportError as exc:
                        # A keep-alive connection the server closed as it was reused: the
                        # client's race, not the server's answer. Counted, and on with it.
                        self.errors[type(exc).__name__] += 1
                        continue
                    self.statuses[response.status_code] += 1
                    if len(self.bodies) < 5000:
                        self.bodies.append(response.content)

            await asyncio.gather(*(loop() for _ in range(self.concurrency)))


def _inserts(url: str) -> int:
    """Return the rows ever inserted into id_managers, rolled back or not: the id sequence.

    Each health probe inserts a row of its own and rolls it back (the sequence still moves);
    an allocation of an existing prefix is an UPDATE.
    """
    query = "SELECT last_value FROM id_managers_id_seq"
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        value = int(connection.execute(sa.text(query)).scalar_one())
    engine.dispose()
    return value


def test_a_flood_of_health_checks_shares_one_probe_a_second(
    busy: tuple[ServerProcess, Keys, str],
) -> None:
    """The issue: 64 concurrent /health took the pool (allocations 0.4 s -> 5 s; 23 s at 200)."""
    server, keys, url = busy
    generate = keys.header("generate")
    figures: dict[str, Any] = {"quiet": _figures(_latencies(server.url, generate, 1.5))}
    for concurrency in (64, 200):
        inserts_before = _inserts(url)
        began = time.monotonic()
        with Flood(server.url, "/health", concurrency, {}) as flood:
            latencies = _latencies(server.url, generate, 2)
        seconds = time.monotonic() - began
        probes = _inserts(url) - inserts_before
        stamps = {json.loads(b)["timestamp"] for b in flood.bodies}
        figures[f"{concurrency} concurrent /health"] = {
            **_figures(latencies),
            "health_requests": sum(flood.statuses.values()),
            "statuses": dict(flood.statuses),
            "client_transport_errors": sum(flood.errors.values()),
            "probes": probes,
            "seconds": round(seconds, 1),
            "distinct_reports_seen": len(stamps),
        }
        assert set(flood.statuses) == {200}, flood.statuses
        assert sum(flood.statuses.values()) > 5 * probes
        assert probes <= seconds + 2, (probes, seconds)  # one a second, shared
        # Allocations go on meanwhile: a stall bound (the issue saw 5 s at 64, 23 s at 200),
        # not a speed figure; the figures are recorded above.
        assert max(latencies) < STALL_S, _figures(latencies)
    record("health flood", figures)


def test_metrics_need_a_key_and_stay_small_whatever_the_sequences(
    busy: tuple[ServerProcess, Keys, str],
) -> None:
    """The issue: 13,700 prefixes made an 8.5 MB public page that took 2 s to build."""
    server, keys, url = busy
    generate = keys.header("generate")
    # 2,000 sequences, stored at once; each then takes an ID through the API (a label each).
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO id_managers (prefix) "
                "SELECT 'M' || lpad(n::text, 5, '0') FROM generate_series(0, 1999) AS n"
            )
        )
    engine.dispose()

    def allocate(start: int) -> None:
        with httpx.Client(base_url=server.url, headers=generate, timeout=30) as client:
            for n in range(start, 2000, 4):
                response = client.post(f"/api/v1/prefixes/M{n:05d}/ids")
                assert response.status_code == 201, response.text

    threads = [threading.Thread(target=allocate, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        anonymous = client.get("/metrics")
        began = time.monotonic()
        page = client.get("/metrics", headers=keys.header("read"))
        took = time.monotonic() - began
    labels = [
        line for line in page.text.splitlines() if line.startswith("idmanager_ids_allocated_total{")
    ]
    record(
        "metrics size",
        {
            "prefixes": 2001,
            "anonymous": anonymous.status_code,
            "bytes": len(page.content),
            "prefix_labels": len(labels),
            "seconds": round(took, 3),
        },
    )
    assert_problem(anonymous, 401)
    assert page.status_code == 200
    assert len(labels) == 101  # 100 prefixes of their own (IDMANAGER_METRICS_MAX_PREFIXES), _other
    assert any('prefix="_other"' in line for line in labels)
    assert len(page.content) < 32_000


def test_a_flood_of_metrics_does_not_stall_allocations(
    busy: tuple[ServerProcess, Keys, str],
) -> None:
    server, keys, _ = busy
    generate = keys.header("generate")
    quiet = _latencies(server.url, generate, 2)
    with Flood(server.url, "/metrics", 16, keys.header("read")) as flood:
        flooded = _latencies(server.url, generate, 3)
    record(
        "metrics flood",
        {
            "quiet": _figures(quiet),
            "16 concurrent /metrics": {
                **_figures(flooded),
                "metrics_requests": sum(flood.statuses.values()),
            },
        },
    )
    assert set(flood.statuses) == {200}
    assert max(flooded) < STALL_S, _figures(flooded)  # the issue saw 7.7 s


# Row 5: the block cache and 6,000 spellings of one prefix.


def test_spellings_of_one_prefix_are_one_sequence_with_the_block_cache(
    databases: Any, tmp_path: Path
) -> None:
    """The issue: one cache entry per spelling, never evicted (+23 MB). 2,000 spellings here
    (the 6,000 of the issue run in process: tests/unit/test_security_edges.py)."""
    keys = Keys()
    url = databases.create("postgresql")
    server = ServerProcess("spellings", server_env(url, keys, block_cache="true"), tmp_path)
    server.start()
    variants = [
        "%20" * left
        + "".join(c.lower() if mask >> i & 1 else c for i, c in enumerate("SPELL"))
        + "%09" * right
        for left in range(14)
        for right in range(14)
        for mask in range(32)
    ][:2000]
    ids: list[str] = []
    generate = keys.header("generate")

    def allocate(mine: list[str]) -> None:
        with httpx.Client(base_url=server.url, headers=generate, timeout=30) as client:
            for variant in mine:
                response = client.post(f"/api/v1/prefixes/{variant}/ids")
                assert response.status_code == 201, response.text
                ids.extend(response.json()["ids"])

    try:
        allocate(["SPELL"])
        memory_before = rss_mb(server)
        threads = [threading.Thread(target=allocate, args=(variants[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        memory_after = rss_mb(server)
    finally:
        server.stop()
    rows = _rows(url, "SELECT scope, prefix, last_value FROM id_managers")
    record(
        "block cache spellings",
        {
            "spellings": len(set(variants)),
            "sequences": len(rows),
            "ids": len(ids),
            "duplicates": len(ids) - len(set(ids)),
            "server_rss_mb_before_after": [round(memory_before, 1), round(memory_after, 1)],
        },
    )
    assert len(set(variants)) == 2000
    assert rows == [("", "SPELL", 2001)]  # one sequence; the tail went back at shutdown
    assert sorted(ids, key=parse_id_ordinal) == [format_id("SPELL", n) for n in range(1, 2002)]
    assert memory_after - memory_before < 8, (memory_before, memory_after)


def parse_id_ordinal(text: str) -> int:
    return parse_id(text).ordinal


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        found = [tuple(r) for r in connection.execute(sa.text(sql))]
    engine.dispose()
    return found


# Row 10: slow headers, idle keep-alive connections, and a connection limit, under serve.


def test_serve_closes_slow_and_idle_connections_and_bounds_them(
    databases: Any, tmp_path: Path
) -> None:
    """The issue: 500 connections sending headers slowly for 40 s, none closed."""
    keys = Keys()
    env = server_env(
        databases.create("sqlite"),
        keys,
        header_timeout_s="1",
        keep_alive_timeout_s="1",
        max_connections="50",
    )
    idmanager_cli = str(Path(sys.executable).with_name("idmanager"))
    server = ServerProcess(
        "timeouts", env, tmp_path, command=[idmanager_cli, "serve", "--port", "{port}"]
    )
    server.start()
    try:
        began = time.monotonic()  # before any connection: each is closed 1 s after its own
        slow = [_connect(server.port) for _ in range(100)]
        silent = [_connect(server.port) for _ in range(10)]
        for sock in slow:
            sock.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        time.sleep(0.2)
        # Past the limit of 50 connections, a new request is refused at once.
        crowded = httpx.get(server.url + "/health/live", timeout=5)
        closed_after = _dribble(slow, began, seconds=4, quiet=silent)
        # The slow ones gone, requests are served again; an idle keep-alive is closed too.
        with httpx.Client(base_url=server.url, timeout=5) as client:
            served = client.get("/health/live")
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        idle.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = idle.recv(4096)
        idle_began = time.monotonic()
        idle.setblocking(False)
        idle_closed = _dribble([], idle_began, seconds=4, quiet=[idle])
    finally:
        server.stop()
    closed = [round(t, 2) for t in closed_after if t is not None]
    record(
        "slow and idle connections under serve",
        {
            "slow_header_connections": len(slow),
            "silent_connections": len(silent),
            "closed": len(closed),
            "closed_after_s": [min(closed), max(closed)] if closed else None,
            "request_past_the_limit": crowded.status_code,
            "idle_keep_alive_closed_after_s": idle_closed[0] and round(idle_closed[0], 2),
        },
    )
    assert crowded.status_code == 503
    assert all(t is not None for t in closed_after), closed_after
    assert all(0.9 <= t <= 2.5 for t in closed_after if t is not None), closed_after
    assert served.status_code == 200
    assert first.startswith(b"HTTP/1.1 200 ")
    assert idle_closed[0] is not None and 0.9 <= idle_closed[0] <= 2.5


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _dribble(
    talking: list[socket.socket],
    began: float,
    *,
    seconds: float,
    quiet: list[socket.socket] | None = None,
) -> list[float | None]:
    """Send a header byte every 0.2 s on each ``talking`` socket, nothing on the ``quiet``
    ones; return when the server closed each (seconds after ``began``), None for one still
    open after ``seconds``."""
    socks = [*talking, *(quiet or [])]
    closed: list[float | None] = [None] * len(socks)
    deadline = began + seconds
    while time.monotonic() < deadline and any(t is None for t in closed):
        for i, sock in enumerate(socks):
            if closed[i] is not None:
                continue
            try:
                if sock.recv(4096) == b"":
                    closed[i] = time.monotonic() - began
                    continue
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.monotonic() - began
                continue
            if i < len(talking):
                with contextlib.suppress(BlockingIOError, OSError):
                    sock.send(b"X")
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    return closed
