"""A user's tour of the HTTP service: real ``uvicorn`` on SQLite and PostgreSQL.

The breadth of cases (every route, status, problem and role) is the in-process tier's
(``tests/unit/test_http.py``); here the same service runs as an operator runs it, over real
databases, and what only they show is checked: committed IDs, streaming over the wire,
concurrency, the health check's savepoint, the connection pool.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import sqlalchemy as sa

import idmanager

if TYPE_CHECKING:
    from conftest import Keys

PROBLEM = "application/problem+json"


def test_allocate_and_read_back(
    http: httpx.Client, keys: Keys, new_prefix: Callable[[str], str]
) -> None:
    prefix = new_prefix("T")
    generate, read = keys.header("generate"), keys.header("read")
    first = http.post(f"/api/v1/prefixes/{prefix.lower()}/ids", headers=generate)
    assert first.status_code == 201, first.text
    assert first.json() == {"prefix": prefix, "ids": [f"{prefix}-AAA0001"], "count": 1}
    bulk = http.post(f"/api/v1/prefixes/{prefix}/ids", params={"count": 3}, headers=generate)
    assert bulk.json()["ids"] == [f"{prefix}-AAA000{n}" for n in (2, 3, 4)]

    # Above 10,000 IDs the body is streamed: chunked on the wire, whole when read.
    big = http.post(
        f"/api/v1/prefixes/{prefix}/ids", params={"count": 25_000}, headers=keys.header("admin")
    )
    assert big.status_code == 201
    assert big.headers["transfer-encoding"] == "chunked"
    ids = json.loads(big.content)["ids"]
    assert len(ids) == len(set(ids)) == 25_000
    assert (ids[0], ids[-1]) == (f"{prefix}-AAA0005", f"{prefix}-AAC5006")

    stats = http.get(f"/api/v1/prefixes/{prefix}", headers=read).json()
    assert (stats["latest_id"], stats["next_id"]) == (f"{prefix}-AAC5006", f"{prefix}-AAC5007")
    assert (stats["count_issued"], stats["exists"], stats["is_active"]) == (25_004, True, True)
    assert (stats["template"], stats["warning"]) == (None, None)
    assert stats["created_by"].startswith("api-key:")  # the key of its first allocation
    created = datetime.fromisoformat(stats["created_at"])
    assert created.tzinfo is not None
    assert created <= datetime.fromisoformat(stats["updated_at"])

    # Scopes and periods are sequences of their own.
    scope = "tour-" + prefix.lower()
    scoped = http.post(f"/api/v1/prefixes/{prefix}/ids", params={"scope": scope}, headers=generate)
    assert scoped.json()["ids"] == [f"{prefix}-AAA0001"]
    template = quote(prefix + "{YYYY}")
    dated = http.post(
        f"/api/v1/prefixes/{template}/ids", params={"date": "2026-12-31"}, headers=generate
    )
    assert dated.json()["ids"] == [f"{prefix}2026-AAA0001"]
    period = http.get(
        f"/api/v1/prefixes/{template}", params={"date": "2026-01-01"}, headers=read
    ).json()
    assert (period["prefix"], period["template"]) == (f"{prefix}2026", prefix + "{YYYY}")
    listed = http.get("/api/v1/prefixes", params={"scope": scope}, headers=read).json()
    assert [(p["scope"], p["prefix"]) for p in listed["items"]] == [(scope, prefix)]

    parsed = http.get(f"/api/v1/ids/{prefix.lower()}-aab12", headers=read).json()
    assert (parsed["normalized"], parsed["ordinal"]) == (f"{prefix}-AAB0012", 10011)


def test_change_and_audit(http: httpx.Client, keys: Keys, new_prefix: Callable[[str], str]) -> None:
    prefix = new_prefix("C")
    admin = keys.header("admin")
    url = f"/api/v1/prefixes/{prefix}"
    fmt = {"separator": "/", "letter_width": 0, "digit_width": 6}
    registered = http.put(url, json={"format": fmt}, headers=admin).json()
    assert (registered["format"], registered["next_id"]) == (fmt, f"{prefix}/000001")
    assert registered["created_by"].startswith("api-key:")
    ids = http.post(f"{url}/ids", params={"count": 2}, headers=keys.header("generate")).json()
    assert ids["ids"] == [f"{prefix}/000001", f"{prefix}/000002"]
    locked = http.put(url, json={"format": {}}, headers=admin)
    assert (locked.status_code, locked.json()["type"]) == (
        409,
        "urn:idmanager:problem:format-locked",
    )

    reset = http.post(f"{url}/reset", json={"reset_to": f"{prefix}/000100"}, headers=admin).json()
    assert (reset["previous_id"], reset["next_id"]) == (f"{prefix}/000002", f"{prefix}/000101")
    backwards = http.post(f"{url}/reset", json={"reset_to": None}, headers=admin)
    assert backwards.status_code == 409
    assert backwards.headers["content-type"] == PROBLEM
    http.put(url, json={"is_active": False}, headers=admin)
    refused = http.post(f"{url}/ids", headers=keys.header("generate"))
    assert refused.json()["type"] == "urn:idmanager:problem:prefix-inactive"

    audit = http.get("/api/v1/audit", params={"prefix": prefix}, headers=keys.header("read"))
    items = audit.json()["items"]
    assert [i["action"] for i in items] == ["configure", "reset", "register"]
    assert {i["actor"] for i in items} == {registered["created_by"]}
    assert (items[1]["old_id"], items[1]["new_id"]) == (f"{prefix}/000002", f"{prefix}/000100")
    first_page = http.get(
        "/api/v1/audit", params={"prefix": prefix, "limit": 2}, headers=keys.header("read")
    ).json()
    rest = http.get(
        "/api/v1/audit",
        params={"prefix": prefix, "before": first_page["next_cursor"]},
        headers=keys.header("read"),
    ).json()
    assert [i["id"] for i in first_page["items"] + rest["items"]] == [i["id"] for i in items]


def test_concurrent_requests_never_duplicate(
    http: httpx.Client, keys: Keys, new_prefix: Callable[[str], str]
) -> None:
    prefix = new_prefix("P")

    def allocate(_: int) -> list[str]:
        response = http.post(
            f"/api/v1/prefixes/{prefix}/ids", params={"count": 5}, headers=keys.header("generate")
        )
        assert response.status_code == 201, response.text
        ids: list[str] = response.json()["ids"]
        return ids

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(allocate, range(40)))
    every = [i for batch in batches for i in batch]
    assert len(every) == len(set(every)) == 200
    stats = http.get(f"/api/v1/prefixes/{prefix}", headers=keys.header("read")).json()
    assert stats["count_issued"] == 200


def test_health_leaves_nothing_behind(
    http: httpx.Client, keys: Keys, backend: str, database_urls: dict[str, str]
) -> None:
    first = http.get("/health", headers=keys.header("read"))
    assert first.status_code == 200
    report = first.json()
    assert (report["status"], report["error_type"]) == ("healthy", None)
    assert report["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"
    assert isinstance(report["prefix_count"], int)
    # The probe allocated in a savepoint and rolled it back: the database holds no trace.
    url = database_urls[backend].replace("+aiosqlite", "")
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT count(*) FROM id_managers WHERE prefix = '_HEALTH_CHECK_'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert rows == 0
    listed = http.get("/api/v1/prefixes", params={"limit": 1000}, headers=keys.header("read"))
    assert "_HEALTH_CHECK_" not in {p["prefix"] for p in listed.json()["items"]}
    assert http.get("/health/live").json() == {"status": "alive"}
    # The pool the requests used is the server's own, and it reports it.
    metrics = http.get("/metrics", headers=keys.header("read")).text
    assert re.search(r"^idmanager_db_pool_checked_out \d", metrics, re.M)
