"""The HTTP service in-process, over the in-memory fake: every route, status and problem.

What a client of the API relies on: the bodies and statuses of each route, the access rules
of each role, the problem types of the registry (each documented in OpenAPI where a route
answers with it), the body limit, streaming, the audit trail, docs and metrics. The real
server, real databases and their faults are the journeys of ``tests/e2e``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI

from api_keys import Keys
from idmanager.application.results import SequenceStats, from_json
from idmanager.domain.errors import BusyError, StorageError
from idmanager.domain.format import MAX_ORDINAL, format_id
from idmanager.problems import PROBLEM_JSON, kind

from .asgi import Api, assert_problem, call_asgi, serve

# The stats are the application's typed result: a field added there is a field of the API.
STATS_FIELDS = {field.name for field in dataclasses.fields(SequenceStats)}


def actor_of(key: str) -> str:
    """Return the name the audit trail gives an API key (never the key itself)."""
    return "api-key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def openapi(shared_app: tuple[FastAPI, Any]) -> dict[str, Any]:
    """The OpenAPI document of the app (50,000 IDs per request at most)."""
    document: dict[str, Any] = shared_app[0].openapi()
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


# -- allocation -------------------------------------------------------------------------------


async def test_allocate_one_then_a_bulk(api: Api) -> None:
    first = await api.http.post("/api/v1/prefixes/cus/ids", headers=api.headers("generate"))
    assert first.status_code == 201
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"prefix": "CUS", "ids": ["CUS-AAA0001"], "count": 1}
    bulk = await api.http.post(
        "/api/v1/prefixes/CUS/ids", params={"count": 3}, headers=api.headers("generate")
    )
    assert bulk.json() == {
        "prefix": "CUS",
        "ids": ["CUS-AAA0002", "CUS-AAA0003", "CUS-AAA0004"],
        "count": 3,
    }
    assert api.repository.rows["", "CUS"].last_value == 4
    assert api.store.sync.rollbacks == 0  # committed, each of them


async def test_a_big_bulk_is_streamed_a_letter_block_at_a_time(api: Api) -> None:
    admin = api.headers("admin")
    streamed = await call_asgi(
        api.app, "POST", "/api/v1/prefixes/BIG/ids", query="count=25000", headers=admin
    )
    assert streamed.status == 201
    assert "content-length" not in streamed.headers
    # Sent as it is formatted: the head, one message per letter block, the tail.
    assert len(streamed.bodies) == 5
    body = streamed.json()
    ids = body["ids"]
    assert body["count"] == len(ids) == len(set(ids)) == 25_000
    assert ids[0] == "BIG-AAA0001"
    assert ids[9998:10000] == ["BIG-AAA9999", "BIG-AAB0001"]
    assert ids[-1] == "BIG-AAC5002"
    # Up to 10,000 IDs the body is built at once, with its length.
    whole = await call_asgi(
        api.app, "POST", "/api/v1/prefixes/BIG/ids", query="count=10000", headers=admin
    )
    assert int(whole.headers["content-length"]) == len(whole.body)
    assert whole.json()["ids"][0] == "BIG-AAC5003"


async def test_a_count_above_the_limit_names_it_and_creates_nothing(api: Api) -> None:
    response = await api.http.post(
        "/api/v1/prefixes/CUS/ids", params={"count": 50_001}, headers=api.headers("generate")
    )
    body = assert_problem(response, 422, "invalid-count")
    assert "50,000" in body["detail"]
    assert api.repository.rows == {}


@pytest.mark.parametrize("count", ["0", "-5", "abc", "1.5", "", "1e9"])
async def test_a_count_must_be_a_positive_integer(api: Api, count: str) -> None:
    response = await api.http.post(
        "/api/v1/prefixes/CUS/ids", params={"count": count}, headers=api.headers("generate")
    )
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["loc"] == ["query", "count"]
    assert api.repository.rows == {}


async def test_a_huge_count_is_refused_by_the_limit(api: Api) -> None:
    response = await api.http.post(
        "/api/v1/prefixes/CUS/ids", params={"count": "9" * 400}, headers=api.headers("generate")
    )
    assert "must not exceed 50,000" in assert_problem(response, 422, "invalid-count")["detail"]
    assert api.repository.rows == {}


async def test_scopes_are_separate_sequences(api: Api) -> None:
    assert await api.allocate("CUS", scope="tenant-a") == ["CUS-AAA0001"]
    assert await api.allocate("CUS", scope="tenant-b") == ["CUS-AAA0001"]
    assert await api.allocate("CUS", scope="tenant-a") == ["CUS-AAA0002"]
    read = api.headers("read")
    listed = await api.http.get("/api/v1/prefixes", params={"scope": "tenant-a"}, headers=read)
    assert [(p["prefix"], p["scope"]) for p in listed.json()["items"]] == [("CUS", "tenant-a")]
    every = await api.http.get("/api/v1/prefixes", headers=read)
    assert [p["scope"] for p in every.json()["items"]] == ["tenant-a", "tenant-b"]
    stats = await api.http.get("/api/v1/prefixes/CUS", params={"scope": "tenant-b"}, headers=read)
    assert (stats.json()["scope"], stats.json()["count_issued"]) == ("tenant-b", 1)
    unscoped = await api.http.get("/api/v1/prefixes/CUS", headers=read)
    assert assert_problem(unscoped, 404, "prefix-not-found")["detail"] == (
        "Prefix CUS does not exist"
    )


async def test_period_templates_resolve_from_the_date(api: Api) -> None:
    url = f"/api/v1/prefixes/{quote('INV{YYYY}')}/ids"
    generate = api.headers("generate")
    december = await api.http.post(url, params={"date": "2026-12-31"}, headers=generate)
    january = await api.http.post(url, params={"date": "2027-01-01"}, headers=generate)
    back_dated = await api.http.post(url, params={"date": "2026-05-01"}, headers=generate)
    assert december.json() == {"prefix": "INV2026", "ids": ["INV2026-AAA0001"], "count": 1}
    assert january.json()["ids"] == ["INV2027-AAA0001"]
    assert back_dated.json()["ids"] == ["INV2026-AAA0002"]

    read = api.headers("read")
    stats = await api.http.get(
        f"/api/v1/prefixes/{quote('INV{YYYY}')}", params={"date": "2026-01-01"}, headers=read
    )
    assert stats.json()["prefix"] == "INV2026"
    assert stats.json()["latest_id"] == "INV2026-AAA0002"
    assert stats.json()["template"] == "INV{YYYY}"
    periods = await api.http.get("/api/v1/prefixes", params={"template": "inv{yyyy}"}, headers=read)
    assert [p["prefix"] for p in periods.json()["items"]] == ["INV2026", "INV2027"]

    unknown = await api.http.post(f"/api/v1/prefixes/{quote('INV{XX}')}/ids", headers=generate)
    assert "Unknown date token {XX}" in assert_problem(unknown, 422, "invalid-prefix")["detail"]
    no_such_day = await api.http.post(url, params={"date": "2026-02-30"}, headers=generate)
    assert "not a calendar date" in assert_problem(no_such_day, 422, "invalid-input")["detail"]
    other_shape = await api.http.post(url, params={"date": "31.12.2026"}, headers=generate)
    assert_problem(other_shape, 422, "validation-error")


async def test_without_create_missing_a_prefix_must_be_registered(keys: Keys) -> None:
    async with serve(keys, create_missing=False) as api:
        missing = await api.http.post("/api/v1/prefixes/NEW/ids", headers=api.headers("generate"))
        assert "NEW" in assert_problem(missing, 404, "prefix-not-found")["detail"]
        assert api.repository.rows == {}
        registered = await api.admin("PUT", "/api/v1/prefixes/NEW", json={})
        assert registered.status_code == 200
        assert (registered.json()["exists"], registered.json()["latest_id"]) == (True, None)
        assert await api.allocate("NEW") == ["NEW-AAA0001"]


# -- reading ----------------------------------------------------------------------------------


async def test_stats_of_a_prefix(api: Api) -> None:
    await api.allocate("CUS", 42)
    response = await api.http.get("/api/v1/prefixes/cus", headers=api.headers("read"))
    assert response.status_code == 200
    stats = response.json()
    # Every field of the typed result, as the storage holds it, and nothing else.
    assert stats.keys() == STATS_FIELDS
    assert from_json(SequenceStats, stats) == SequenceStats.of(api.repository.rows["", "CUS"])
    assert (stats["prefix"], stats["scope"], stats["exists"]) == ("CUS", "", True)
    assert (stats["latest_id"], stats["next_id"]) == ("CUS-AAA0042", "CUS-AAA0043")
    assert (stats["count_issued"], stats["is_active"]) == (42, True)
    assert stats["format"] == {"separator": "-", "letter_width": 3, "digit_width": 4}
    assert (stats["template"], stats["warning"]) == (None, None)
    assert stats["created_by"] == actor_of(api.keys.generate)  # created by its first allocation
    created = datetime.fromisoformat(stats["created_at"])
    assert created.tzinfo is not None and created <= datetime.fromisoformat(stats["updated_at"])
    assert 0 < stats["width_usage"] < 0.01


async def test_list_prefixes_pages_and_filters(api: Api) -> None:
    for name in ("ALPHA", "BETA", "GAMMA"):
        await api.allocate(name)
    await api.admin("PUT", "/api/v1/prefixes/BETA", json={"is_active": False})
    read = api.headers("read")

    async def names(**params: Any) -> list[str]:
        response = await api.http.get("/api/v1/prefixes", params=params, headers=read)
        assert response.status_code == 200, response.text
        return [p["prefix"] for p in response.json()["items"]]

    everything = await api.http.get("/api/v1/prefixes", headers=read)
    assert (everything.json()["skip"], everything.json()["limit"]) == (0, 100)
    assert everything.json()["items"][0].keys() == STATS_FIELDS
    assert await names() == ["ALPHA", "BETA", "GAMMA"]
    assert await names(skip=1, limit=1) == ["BETA"]
    assert await names(active_only="true") == ["ALPHA", "GAMMA"]
    assert await names(active="false") == ["BETA"]
    assert await names(search="mm") == ["GAMMA"]
    assert await names(scope="elsewhere") == []
    for bad in ({"skip": -1}, {"limit": 0}, {"limit": 1001}, {"active_only": "maybe"}):
        response = await api.http.get("/api/v1/prefixes", params=bad, headers=read)
        assert_problem(response, 422, "validation-error")


async def test_parse_ids(api: Api) -> None:
    read = api.headers("read")
    parsed = await api.http.get("/api/v1/ids/cus-aab12", headers=read)
    assert parsed.json() == {
        "prefix": "CUS",
        "letters": "AAB",
        "number": 12,
        "ordinal": 10011,
        "normalized": "CUS-AAB0012",
        "corrected": True,
    }
    exact = (await api.http.get("/api/v1/ids/CUS-AAA0001", headers=read)).json()
    assert (exact["ordinal"], exact["corrected"]) == (1, False)
    zero = (await api.http.get("/api/v1/ids/CUS-AAB0000", headers=read)).json()
    assert zero["normalized"] == "CUS-AAA9999"
    for bad in ("CUS", "CUS-0001", "CUS-AAA", "CUS-AAA99999", "-AAA0001", "CUS-ÄAA0001", "C%0A-A"):
        response = await api.http.get(f"/api/v1/ids/{bad}", headers=read)
        assert assert_problem(response, 422, "invalid-id")["detail"]


async def test_ids_are_parsed_in_their_prefixs_stored_format(api: Api) -> None:
    slashed = {"format": {"separator": "/", "letter_width": 0, "digit_width": 6}}
    await api.admin("PUT", "/api/v1/prefixes/DOC", json=slashed)
    read = api.headers("read")
    # The '/' separator travels in the path as it is.
    parsed = await api.http.get("/api/v1/ids/DOC/2", headers=read)
    assert (parsed.json()["normalized"], parsed.json()["ordinal"]) == ("DOC/000002", 2)
    bare = {"format": {"separator": "", "letter_width": 0, "digit_width": 5}}
    await api.admin("PUT", "/api/v1/prefixes/NUM", json=bare)
    # Without a separator the prefix cannot be told from the digits: it is given.
    given = await api.http.get("/api/v1/ids/NUM7", params={"prefix": "num"}, headers=read)
    assert given.json()["normalized"] == "NUM00007"


async def test_health_and_liveness(api: Api) -> None:
    await api.allocate("CUS")
    before = api.store.sync.commits, api.store.sync.rollbacks
    response = await api.http.get("/health", headers=api.headers("read"))
    # The check ran in a transaction of its own and rolled it back.
    assert (api.store.sync.commits, api.store.sync.rollbacks) == (before[0], before[1] + 1)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    report = response.json()
    timestamp = report.pop("timestamp")
    assert timestamp.endswith("Z") and datetime.fromisoformat(timestamp).tzinfo is not None
    assert report == {
        "status": "healthy",
        "message": "ID Manager service is operational",
        "prefix_count": 1,
        "test_id_generated": "_HEALTH_CHECK_-AAA0001",
        "error_type": None,
    }
    # Without a key: healthy or not, and nothing of what the database holds.
    anonymous = (await api.http.get("/health")).json()
    assert (anonymous["status"], anonymous["prefix_count"]) == ("healthy", None)
    assert (await api.http.get("/health/live")).json() == {"status": "alive"}


async def test_an_unhealthy_service_answers_503_with_its_report(api: Api) -> None:
    api.repository.fail = StorageError("connection refused by db.internal:5432")
    response = await api.http.get("/health", headers=api.headers("read"))
    assert response.status_code == 503
    # A report in the health check's own shape, not a problem: monitors read "status".
    assert response.headers["content-type"] == "application/json"
    report = response.json()
    assert report["status"] == "unhealthy"
    assert report["message"] == "ID Manager service error: connection refused by db.internal:5432"
    assert report["error_type"] == "StorageError"
    assert (report["prefix_count"], report["test_id_generated"]) == (None, None)
    # A caller without a key learns that it is down, not where or why.
    anonymous = await api.http.get("/health")
    assert anonymous.status_code == 503
    assert anonymous.json()["message"] == "ID Manager service error: database unavailable"
    assert anonymous.json()["error_type"] is None
    assert "db.internal" not in anonymous.text
    assert (await api.http.get("/health/live")).status_code == 200


# -- changes ----------------------------------------------------------------------------------


async def test_configure_registers_and_sets_the_format(api: Api) -> None:
    fmt = {"separator": "/", "letter_width": 0, "digit_width": 6}
    created = await api.admin("PUT", "/api/v1/prefixes/DOC", json={"format": fmt})
    assert created.status_code == 200, created.text
    stats = created.json()
    assert stats.keys() == STATS_FIELDS
    assert (stats["format"], stats["next_id"], stats["latest_id"]) == (fmt, "DOC/000001", None)
    assert stats["created_by"] == actor_of(api.keys.admin)
    assert await api.allocate("DOC", 2) == ["DOC/000001", "DOC/000002"]
    locked = await api.admin("PUT", "/api/v1/prefixes/DOC", json={"format": {}})
    assert_problem(locked, 409, "format-locked")
    # The same format again is no change, and allowed.
    same = await api.admin("PUT", "/api/v1/prefixes/DOC", json={"format": fmt})
    assert same.json()["latest_id"] == "DOC/000002"


async def test_configure_latest_id_and_activation(api: Api) -> None:
    moved = await api.admin("PUT", "/api/v1/prefixes/CUS", json={"latest_id": "CUS-AAB0100"})
    assert moved.json()["next_id"] == "CUS-AAB0101"
    backwards = await api.admin("PUT", "/api/v1/prefixes/CUS", json={"latest_id": "CUS-AAA0001"})
    assert_problem(backwards, 409, "reset-refused")
    off = await api.admin("PUT", "/api/v1/prefixes/CUS", json={"is_active": False})
    assert off.json()["is_active"] is False
    refused = await api.http.post("/api/v1/prefixes/CUS/ids", headers=api.headers("generate"))
    assert "CUS" in assert_problem(refused, 409, "prefix-inactive")["detail"]
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={"is_active": True})
    assert await api.allocate("CUS") == ["CUS-AAB0101"]


async def test_reset(api: Api) -> None:
    await api.allocate("TEST", 7)
    url = "/api/v1/prefixes/TEST/reset"
    forward = await api.admin("POST", url, json={"reset_to": "TEST-ZZZ9999"})
    assert forward.status_code == 200, forward.text
    assert forward.json() == {
        "prefix": "TEST",
        "scope": "",
        "previous_id": "TEST-AAA0007",
        "latest_id": "TEST-ZZZ9999",
        "next_id": "TEST-AAAA0001",
        "forced": False,
        "dry_run": False,
    }
    backwards = await api.admin("POST", url, json={"reset_to": None})
    assert "backwards" in assert_problem(backwards, 409, "reset-refused")["detail"]
    dry = await api.admin("POST", url, json={"reset_to": None, "force": True, "dry_run": True})
    assert (dry.json()["next_id"], dry.json()["forced"], dry.json()["dry_run"]) == (
        "TEST-AAA0001",
        True,
        True,
    )
    assert await api.allocate("TEST") == ["TEST-AAAA0001"]  # the dry run changed nothing
    forced = await api.admin("POST", url, json={"reset_to": None, "force": True})
    assert (forced.json()["latest_id"], forced.json()["forced"]) == (None, True)
    assert await api.allocate("TEST") == ["TEST-AAA0001"]
    other = await api.admin("POST", url, json={"reset_to": "OTHER-AAA0001", "force": True})
    assert "must start with 'TEST-'" in assert_problem(other, 422, "invalid-id")["detail"]


async def test_reset_of_an_unknown_prefix_creates_it(api: Api) -> None:
    response = await api.admin(
        "POST", "/api/v1/prefixes/NEW/reset", json={"reset_to": "NEW-ZZZ9999"}
    )
    assert response.json()["next_id"] == "NEW-AAAA0001"
    assert await api.allocate("NEW") == ["NEW-AAAA0001"]


# -- the audit trail --------------------------------------------------------------------------


async def test_changes_are_audited_under_the_callers_key(api: Api) -> None:
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={})
    await api.allocate("CUS", 5)
    await api.admin("POST", "/api/v1/prefixes/CUS/reset", json={"reset_to": "CUS-AAA0100"})
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={"is_active": False})
    response = await api.http.get("/api/v1/audit", headers=api.headers("read"))
    assert response.status_code == 200
    page = response.json()
    assert page["next_cursor"] is None
    items = page["items"]
    assert [i["action"] for i in items] == ["configure", "reset", "register"]  # newest first
    assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
    assert {i["actor"] for i in items} == {actor_of(api.keys.admin)}
    assert api.keys.admin not in response.text
    reset = items[1]
    assert (reset["old_value"], reset["new_value"]) == (5, 100)
    assert (reset["old_id"], reset["new_id"]) == ("CUS-AAA0005", "CUS-AAA0100")
    assert (reset["scope"], reset["prefix"]) == ("", "CUS")
    assert datetime.fromisoformat(reset["at"]).tzinfo is not None
    assert "active True -> False" in items[0]["detail"]


async def test_audit_filters(api: Api) -> None:
    await api.allocate("CUS", scope="acme")  # created on first use, by the generate key
    await api.admin("PUT", "/api/v1/prefixes/INV", json={})
    await api.admin("POST", "/api/v1/prefixes/INV/reset", json={"reset_to": "INV-AAA0009"})
    read = api.headers("read")

    async def actions(**params: Any) -> list[tuple[str, str]]:
        response = await api.http.get("/api/v1/audit", params=params, headers=read)
        assert response.status_code == 200, response.text
        return [(i["prefix"], i["action"]) for i in response.json()["items"]]

    assert await actions() == [("INV", "reset"), ("INV", "register"), ("CUS", "create")]
    assert await actions(scope="acme") == [("CUS", "create")]
    assert await actions(prefix="inv") == [("INV", "reset"), ("INV", "register")]
    assert await actions(action="reset") == [("INV", "reset")]
    assert await actions(actor=actor_of(api.keys.admin), action="register") == [("INV", "register")]
    now = datetime.now(UTC)
    assert len(await actions(since=(now - timedelta(minutes=1)).isoformat())) == 3
    assert await actions(since=(now + timedelta(minutes=1)).isoformat()) == []
    assert await actions(until=(now - timedelta(minutes=1)).isoformat()) == []
    for bad in ({"action": "explode"}, {"limit": 0}, {"limit": 1001}, {"before": 0}):
        response = await api.http.get("/api/v1/audit", params=bad, headers=read)
        assert_problem(response, 422, "validation-error")
    # Times whose UTC falls outside the calendar: bad input, not a 500.
    for bad in ({"since": "0001-01-01T00:00+01:00"}, {"until": "9999-12-31T23:59:59-23:59"}):
        response = await api.http.get("/api/v1/audit", params=bad, headers=read)
        assert "UTC's range" in assert_problem(response, 422, "invalid-input")["detail"]


async def test_the_audit_trail_pages_with_a_cursor(api: Api) -> None:
    for n in range(1, 8):
        await api.admin("POST", "/api/v1/prefixes/CUS/reset", json={"reset_to": f"CUS-AAA000{n}"})
    read = api.headers("read")
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "action": "reset"}
        if cursor is not None:
            params["before"] = cursor
        page = (await api.http.get("/api/v1/audit", params=params, headers=read)).json()
        pages += 1
        seen += [i["new_value"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["items"][-1]["id"]
    assert pages == 3
    assert seen == [7, 6, 5, 4, 3, 2, 1]  # newest first, each once


# -- problems: every kind each route answers with, documented where it happens ---------------


Setup = Callable[[Api], Awaitable[None]]


async def _issued(api: Api) -> None:
    await api.allocate("CUS", 5)


async def _inactive(api: Api) -> None:
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={"is_active": False})


async def _full(api: Api) -> None:
    last = format_id("CUS", MAX_ORDINAL)
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={"latest_id": last})


async def _busy(api: Api) -> None:
    api.repository.fail = BusyError("lock timeout on id_managers row 7 (pid 4242)")


async def _one_sequence(api: Api) -> None:
    await api.allocate("FIRST")


async def _no_separator(api: Api) -> None:
    fmt = {"separator": "", "letter_width": 3, "digit_width": 4}
    await api.admin("PUT", "/api/v1/prefixes/COL", json={"format": fmt})


async def _down(api: Api) -> None:
    api.repository.fail = StorageError("could not connect to db.internal:5432: refused")


@dataclass(frozen=True)
class Case:
    """A request that provokes one kind of problem on one route."""

    operation: str
    method: str
    url: str
    kind: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    setup: Setup | None = None
    settings: dict[str, Any] | None = None  # an app of its own, with these settings

    def __str__(self) -> str:
        return f"{self.operation}-{self.kind}"


IDS = "/api/v1/prefixes/CUS/ids"
ONE = "/api/v1/prefixes/CUS"
RESET = "/api/v1/prefixes/CUS/reset"
TOO_LARGE = b'{"latest_id": "' + b"A" * 70_000 + b'"}'

CASES = [
    Case("allocate_ids", "POST", IDS, "validation-error", {"count": 0}),
    Case("allocate_ids", "POST", "/api/v1/prefixes/bad!/ids", "invalid-prefix"),
    Case("allocate_ids", "POST", IDS, "invalid-scope", {"scope": "a b"}),
    Case("allocate_ids", "POST", IDS, "invalid-input", {"date": "2026-02-30"}),
    Case("allocate_ids", "POST", IDS, "invalid-count", {"count": 50_001}),
    Case("allocate_ids", "POST", IDS, "prefix-inactive", setup=_inactive),
    Case("allocate_ids", "POST", IDS, "conflict", setup=_full),
    Case(
        "allocate_ids",
        "POST",
        IDS,
        "sequence-limit",
        setup=_one_sequence,
        settings={"max_sequences": 1},
    ),
    Case("allocate_ids", "POST", IDS, "sequence-busy", setup=_busy),
    Case("allocate_ids", "POST", IDS, "storage-unavailable", setup=_down),
    Case("list_prefixes", "GET", "/api/v1/prefixes", "validation-error", {"limit": 0}),
    Case("list_prefixes", "GET", "/api/v1/prefixes", "invalid-scope", {"scope": "a b"}),
    Case("list_prefixes", "GET", "/api/v1/prefixes", "storage-unavailable", setup=_down),
    Case("prefix_stats", "GET", ONE, "validation-error", {"date": "31.12.2026"}),
    Case("prefix_stats", "GET", "/api/v1/prefixes/bad!", "invalid-prefix"),
    Case("prefix_stats", "GET", ONE, "invalid-scope", {"scope": "a b"}),
    Case("prefix_stats", "GET", ONE, "invalid-input", {"date": "2026-02-30"}),
    Case("prefix_stats", "GET", ONE, "prefix-not-found"),
    Case("prefix_stats", "GET", ONE, "sequence-busy", setup=_busy),
    Case("prefix_stats", "GET", ONE, "storage-unavailable", setup=_down),
    Case("configure_prefix", "PUT", ONE, "bad-json", content=b"{not json"),
    Case("configure_prefix", "PUT", ONE, "body-too-large", content=TOO_LARGE),
    Case("configure_prefix", "PUT", ONE, "validation-error", json={"unknown": 1}),
    Case("configure_prefix", "PUT", "/api/v1/prefixes/bad!", "invalid-prefix", json={}),
    Case("configure_prefix", "PUT", ONE, "invalid-scope", {"scope": "a b"}, json={}),
    Case("configure_prefix", "PUT", ONE, "invalid-input", {"date": "2026-02-30"}, json={}),
    Case("configure_prefix", "PUT", ONE, "invalid-format", json={"format": {"separator": "*"}}),
    Case("configure_prefix", "PUT", ONE, "invalid-id", json={"latest_id": "garbage"}),
    Case(
        "configure_prefix",
        "PUT",
        ONE,
        "format-locked",
        json={"format": {"separator": "."}},
        setup=_issued,
    ),
    Case(
        "configure_prefix",
        "PUT",
        ONE,
        "reset-refused",
        json={"latest_id": "CUS-AAA0001"},
        setup=_issued,
    ),
    Case(
        "configure_prefix",
        "PUT",
        "/api/v1/prefixes/COLA",
        "ambiguous-format",
        json={"format": {"separator": "", "letter_width": 2, "digit_width": 4}},
        setup=_no_separator,
    ),
    Case(
        "configure_prefix",
        "PUT",
        ONE,
        "sequence-limit",
        json={},
        setup=_one_sequence,
        settings={"max_sequences": 1},
    ),
    Case("configure_prefix", "PUT", ONE, "sequence-busy", json={}, setup=_busy),
    Case("configure_prefix", "PUT", ONE, "storage-unavailable", json={}, setup=_down),
    Case("reset_sequence", "POST", RESET, "bad-json", content=b'{"reset_to": '),
    Case("reset_sequence", "POST", RESET, "body-too-large", content=TOO_LARGE),
    Case("reset_sequence", "POST", RESET, "validation-error", json={"force": "yes"}),
    Case("reset_sequence", "POST", "/api/v1/prefixes/bad!/reset", "invalid-prefix", json={}),
    Case("reset_sequence", "POST", RESET, "invalid-scope", {"scope": "a b"}, json={}),
    Case("reset_sequence", "POST", RESET, "invalid-input", {"date": "2026-02-30"}, json={}),
    Case("reset_sequence", "POST", RESET, "invalid-id", json={"reset_to": "CUS-AA"}),
    Case("reset_sequence", "POST", RESET, "reset-refused", json={}, setup=_issued),
    Case(
        "reset_sequence",
        "POST",
        RESET,
        "sequence-limit",
        json={},
        setup=_one_sequence,
        settings={"max_sequences": 1},
    ),
    Case("reset_sequence", "POST", RESET, "sequence-busy", json={}, setup=_busy),
    Case("reset_sequence", "POST", RESET, "storage-unavailable", json={}, setup=_down),
    Case("read_id", "GET", "/api/v1/ids/CUS-0001", "invalid-id"),
    Case("read_id", "GET", "/api/v1/ids/CUS-AAA0001", "invalid-prefix", {"prefix": "bad!"}),
    Case("read_id", "GET", "/api/v1/ids/CUS-AAA0001", "invalid-scope", {"scope": "a b"}),
    Case("read_id", "GET", "/api/v1/ids/CUS-AAA0001", "validation-error", {"prefix": "A" * 256}),
    Case("read_id", "GET", "/api/v1/ids/CUS-AAA0001", "storage-unavailable", setup=_down),
    Case("list_audit", "GET", "/api/v1/audit", "validation-error", {"action": "explode"}),
    Case("list_audit", "GET", "/api/v1/audit", "invalid-scope", {"scope": "a b"}),
    Case("list_audit", "GET", "/api/v1/audit", "invalid-prefix", {"prefix": "bad!"}),
    Case("list_audit", "GET", "/api/v1/audit", "storage-unavailable", setup=_down),
]


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_each_problem_is_the_registrys_and_documented(
    api: Api, keys: Keys, openapi: dict[str, Any], case: Case
) -> None:
    if case.settings is None:
        await _provoke(api, openapi, case)
    else:
        async with serve(keys, **case.settings) as own:
            await _provoke(own, openapi, case)


async def _provoke(api: Api, openapi: dict[str, Any], case: Case) -> None:
    if case.setup is not None:
        await case.setup(api)
    before = api.repository.snapshot()
    headers = api.headers("admin")
    if case.content is not None:
        headers["content-type"] = "application/json"
    response = await api.http.request(
        case.method,
        case.url,
        params=case.params,
        json=case.json,
        content=case.content,
        headers=headers,
    )
    found = kind(case.kind)
    body = assert_problem(response, found.status, case.kind)
    assert api.repository.snapshot() == before  # a refused request changes nothing
    if found.status == 503:
        # Plain words and a time to wait; the cause (hosts, locks) stays in the log.
        assert body["detail"] == found.example
        assert response.headers["retry-after"] == str(found.retry_after)
    documented = next(op for _, _, op in operations(openapi) if op["operationId"] == case.operation)
    examples = documented["responses"][str(found.status)]["content"][PROBLEM_JSON]["examples"]
    assert case.kind in examples, f"{case.operation} answers {case.kind} but does not say so"
    assert examples[case.kind]["value"]["title"] == found.title


async def test_an_unexpected_error_is_a_500_that_reveals_nothing(keys: Keys) -> None:
    async with serve(keys, raise_app_exceptions=False) as api:

        def explode(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("secret internals: password=hunter2")

        api.repository.allocate = explode
        response = await api.http.post(IDS, headers=api.headers("generate"))
        body = assert_problem(response, 500, "internal-error")
        assert body["detail"] == kind("internal-error").example
        assert "hunter2" not in response.text


# -- access -----------------------------------------------------------------------------------

RANK = {"read": 0, "generate": 1, "admin": 2}
CREDENTIALS = (None, "wrong", "read", "generate", "admin")

# (operation, method, path, JSON body, least role; None = open to all)
ROUTES: list[tuple[str, str, str, Any, str | None]] = [
    ("allocate_ids", "POST", "/api/v1/prefixes/CUS/ids", None, "generate"),
    ("list_prefixes", "GET", "/api/v1/prefixes", None, "read"),
    ("prefix_stats", "GET", "/api/v1/prefixes/CUS", None, "read"),
    ("configure_prefix", "PUT", "/api/v1/prefixes/CUS", {"is_active": True}, "admin"),
    ("reset_sequence", "POST", "/api/v1/prefixes/CUS/reset", {"dry_run": True}, "admin"),
    ("read_id", "GET", "/api/v1/ids/CUS-AAA0001", None, "read"),
    ("list_audit", "GET", "/api/v1/audit", None, "read"),
    ("health", "GET", "/health", None, None),
    ("live", "GET", "/health/live", None, None),
    ("metrics", "GET", "/metrics", None, "read"),
    ("docs", "GET", "/docs", None, None),
    ("openapi", "GET", "/openapi.json", None, None),
    ("openapi-3.0", "GET", "/docs/openapi-3.0.json", None, None),
]


def test_the_access_matrix_covers_every_documented_route(openapi: dict[str, Any]) -> None:
    documented = {op["operationId"] for _, _, op in operations(openapi)}
    assert documented <= {route[0] for route in ROUTES}


@pytest.mark.parametrize(("operation", "method", "url", "body", "needed"), ROUTES, ids=str)
async def test_access(
    api: Api, operation: str, method: str, url: str, body: Any, needed: str | None
) -> None:
    await api.admin("PUT", "/api/v1/prefixes/CUS", json={})  # so that allowed reads find it
    for credential in CREDENTIALS:
        headers = api.headers(credential)
        response = await api.http.request(method, url, json=body, headers=headers)
        if needed is None:
            expected = 200
        elif credential in (None, "wrong"):
            expected = 401
        elif RANK[credential] < RANK[needed]:
            expected = 403
        else:
            expected = 201 if url.endswith("/ids") else 200
        assert response.status_code == expected, (credential, response.text)
        if expected == 401:
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == 'Bearer realm="idmanager"'
        elif expected == 403:
            problem = assert_problem(response, 403, "forbidden")
            assert f"'{needed}' role" in problem["detail"]
            assert f"has '{credential}'" in problem["detail"]
        if credential is not None:  # the key a request carried is never echoed
            assert headers["Authorization"].split(" ", 1)[1] not in response.text


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "bearer nope", "Token x", "Bearer a b", ""]
)
async def test_malformed_credentials_are_401(api: Api, authorization: str) -> None:
    response = await api.http.get("/api/v1/prefixes", headers={"Authorization": authorization})
    assert_problem(response, 401, "unauthorized")


async def test_a_key_is_valid_only_whole(api: Api) -> None:
    for near in (api.keys.admin[:-1], api.keys.admin + "x", api.keys.admin.upper()):
        response = await api.http.get(
            "/api/v1/prefixes", headers={"Authorization": f"Bearer {near}"}
        )
        assert_problem(response, 401, "unauthorized")


async def test_without_keys_everything_is_allowed_and_the_log_says_so() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("idmanager.api")
    logger.addHandler(handler)
    try:
        async with serve(None) as api:
            assert (await api.http.post(IDS)).status_code == 201
            changed = await api.http.put(ONE, json={"is_active": False})
            assert changed.status_code == 200
            audit = (await api.http.get("/api/v1/audit")).json()["items"]
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if "No API keys configured" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert audit[0]["actor"] == "anonymous"


# -- hostile input ----------------------------------------------------------------------------

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
async def test_hostile_prefixes_are_refused_as_problems(api: Api, bad: str) -> None:
    calls = [
        ("POST", f"/api/v1/prefixes/{bad}/ids", None),
        ("GET", f"/api/v1/prefixes/{bad}", None),
        ("PUT", f"/api/v1/prefixes/{bad}", {"is_active": True}),
        ("POST", f"/api/v1/prefixes/{bad}/reset", {"reset_to": None}),
    ]
    for method, url, body in calls:
        response = await api.admin(method, url, json=body)
        assert 400 <= response.status_code < 500, (method, url, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
    parsed = await api.admin("GET", f"/api/v1/ids/{bad}-AAA0001")
    # '_HEALTH_CHECK_-AAA0001' is a well-formed ID; the rest are refused.
    assert parsed.status_code < 500
    assert api.repository.rows == {}


@pytest.mark.parametrize(
    "params",
    [
        {"count": "-" + "9" * 30},
        {"scope": "x" * 256},
        {"scope": "tab\there"},
        {"scope": "nul\x00"},
        {"date": "2026-1-1"},
    ],
    ids=["negative", "long-scope", "tab", "nul", "short-date"],
)
async def test_hostile_query_parameters(api: Api, params: dict[str, str]) -> None:
    response = await api.admin("POST", IDS, params=params)
    assert_problem(response, 422)
    assert api.repository.rows == {}


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"", "validation-error"),
        (b"null", "validation-error"),
        (b"[]", "validation-error"),
        (b'"text"', "validation-error"),
        (b'{"reset_to": 5}', "validation-error"),
        (b'{"reset_to": {"$gt": ""}}', "validation-error"),
        (b'{"force": "yes please"}', "validation-error"),
        (b'{"force": 1}', "validation-error"),  # strict: 1 does not force a reset
        (b'{"reset_to": "' + b"A" * 2000 + b'"}', "validation-error"),
        (b"{'reset_to': null}", "bad-json"),
        (b"[" * 5000 + b"]" * 5000, "bad-json"),  # nested past what the decoder takes
        (b'{"reset_to": "\xff\xfe"}', "bad-json"),  # not UTF-8
    ],
    ids=range(12),
)
async def test_hostile_bodies(api: Api, body: bytes, name: str) -> None:
    await api.allocate("CUS", 3)
    before = api.repository.snapshot()
    response = await api.admin(
        "POST", RESET, content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, kind(name).status, name)
    assert len(response.content) < 10_000  # the input is not echoed back
    assert problem["detail"]
    assert api.repository.snapshot() == before


async def test_unknown_route_and_wrong_method(api: Api) -> None:
    missing = await api.http.get("/api/v2/nothing")
    body = assert_problem(missing, 404)
    assert (body["type"], body["title"]) == ("about:blank", "Not Found")
    wrong = await api.http.delete("/api/v1/prefixes")
    assert assert_problem(wrong, 405)["title"] == "Method Not Allowed"
    assert wrong.headers["allow"] == "GET"
    # Every method the path takes, from each route on it.
    other = await api.http.patch("/api/v1/prefixes/CUS")
    assert other.headers["allow"] == "GET, PUT"
    # Also inside a mount: the static files of the docs and the console.
    for asset in ("/console/static/console.css", "/docs/assets/swagger-ui.css"):
        response = await api.http.post(asset)
        assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD"), asset


# -- the body limit ---------------------------------------------------------------------------


async def test_a_body_declared_too_large_is_refused_before_it_is_read(api: Api) -> None:
    headers = {**api.headers("admin"), "content-type": "application/json"}
    headers["content-length"] = str(len(TOO_LARGE))
    exchange = await call_asgi(api.app, "PUT", ONE, headers=headers, chunks=[TOO_LARGE])
    assert exchange.status == 413
    assert exchange.reads == 0
    assert exchange.headers["connection"] == "close"
    assert exchange.headers["content-type"] == PROBLEM_JSON
    problem = exchange.json()
    assert (problem["type"], problem["title"]) == (
        kind("body-too-large").type,
        kind("body-too-large").title,
    )
    assert "65,536 bytes" in problem["detail"]
    assert api.repository.rows == {}


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(api: Api) -> None:
    # No Content-Length: the body arrives in pieces of 16 KiB; the fifth passes 64 KiB.
    headers = {
        **api.headers("admin"),
        "content-type": "application/json",
        "transfer-encoding": "chunked",
    }
    chunks = [b"{" + b" " * (16 * 1024 - 1)] + [b" " * 16 * 1024] * 9
    exchange = await call_asgi(api.app, "PUT", ONE, headers=headers, chunks=chunks)
    assert exchange.status == 413
    assert exchange.reads == 5  # nothing more is read
    assert exchange.json()["type"] == kind("body-too-large").type
    assert api.repository.rows == {}


async def test_a_body_at_the_limit_is_accepted(api: Api) -> None:
    text = b'{"is_active": true}'
    body = text[:-1] + b" " * (64 * 1024 - len(text)) + b"}"
    assert len(body) == 64 * 1024
    chunked = {**api.headers("admin"), "content-type": "application/json"}
    exchange = await call_asgi(
        api.app, "PUT", ONE, headers=chunked, chunks=[body[:40_000], body[40_000:]]
    )
    assert exchange.status == 200, exchange.body
    assert exchange.json()["is_active"] is True


# -- OpenAPI, docs and metrics ----------------------------------------------------------------


def test_openapi_documents_problems_roles_and_limits(openapi: dict[str, Any]) -> None:
    assert openapi["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    found = list(operations(openapi))
    assert len(found) == 10
    for path, method, op in found:
        assert op.get("description") and op.get("summary"), (path, method)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != "/health":
                assert list(response["content"]) == [PROBLEM_JSON], (path, method, status)
        if path.startswith("/api/"):
            assert {"401", "403", "422", "503"} <= op["responses"].keys(), (path, method)
            assert op["security"] == [{"HTTPBearer": []}]
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    for name, example in response["content"][PROBLEM_JSON]["examples"].items():
                        registered = kind(name)
                        assert example["value"] == {
                            "type": registered.type,
                            "title": registered.title,
                            "status": registered.status,
                            "detail": registered.example,
                        }
                        assert str(registered.status) == status
    allocate = openapi["paths"]["/api/v1/prefixes/{prefix}/ids"]["post"]
    count = next(p for p in allocate["parameters"] if p["name"] == "count")
    assert count["schema"]["maximum"] == 50_000
    assert openapi["components"]["schemas"]["IdsResponse"]["examples"]
    # The results' own docstrings describe their fields.
    stats = openapi["components"]["schemas"]["SequenceStats"]
    assert stats["properties"].keys() == STATS_FIELDS
    assert stats["properties"]["template"]["description"]
    assert openapi["components"]["schemas"]["AuditPage"]["properties"]["next_cursor"]


async def test_docs_work_offline(api: Api) -> None:
    page = await api.http.get("/docs")
    assert page.status_code == 200
    html = page.text
    outside = [
        u for u in re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", html) if "//localhost" not in u
    ]
    assert outside == [], f"/docs refers to outside hosts: {outside}"
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert (await api.http.get(asset)).status_code == 200, asset
    ui_schema_url = re.search(r"""url:\s*['"]([^'"]+)['"]""", html)
    assert ui_schema_url is not None
    ui_schema = (await api.http.get(ui_schema_url.group(1))).json()
    # The packaged Swagger UI renders OpenAPI 3.0: it gets a 3.0 rendering of the document.
    assert ui_schema["openapi"].startswith("3.0.")
    assert ui_schema["paths"].keys() == (await api.http.get("/openapi.json")).json()["paths"].keys()
    assert '"type": "null"' not in json.dumps(ui_schema)


async def test_metrics(keys: Keys) -> None:
    async with serve(keys) as api:  # counters of its own
        await api.allocate("CUS", 7)
        await api.allocate("CUS", 2)
        await api.admin("POST", "/api/v1/prefixes/bad!/ids")
        await api.admin("POST", IDS, params={"count": 0})
        response = await api.http.get("/metrics", headers=api.headers("read"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'idmanager_ids_allocated_total{prefix="CUS"} 9.0' in text
    assert "idmanager_allocation_duration_seconds_count 2.0" in text
    assert 'idmanager_errors_total{type="InvalidPrefixError"} 1.0' in text
    assert 'idmanager_errors_total{type="RequestValidationError"} 1.0' in text
    # No block cache unless asked: each allocation went to storage, nothing reserved ahead.
    assert "idmanager_block_cache" not in text
    assert api.repository.rows["", "CUS"].last_value == 9


async def test_the_block_cache_serves_from_blocks_and_hands_the_tail_back(keys: Keys) -> None:
    blocks = {"block_cache_initial_block": 50, "block_cache_min_block": 10}
    async with serve(keys, block_cache=True, **blocks) as api:
        big = await api.allocate("CUS", 150)  # above block_cache_max_count: from storage
        small = [i for _ in range(5) for i in await api.allocate("CUS")]
        reserved = api.repository.rows["", "CUS"].last_value
        metrics = (await api.http.get("/metrics", headers=api.headers("read"))).text
    assert (big[0], big[-1]) == ("CUS-AAA0001", "CUS-AAA0150")
    assert small == [f"CUS-AAA01{n}" for n in range(51, 56)]
    assert reserved > 155  # a block reserved ahead, in storage
    assert "idmanager_block_cache_blocks_fetched_total 1.0" in metrics
    # At shutdown the unused tail went back, and the audit trail says so.
    assert api.repository.rows["", "CUS"].last_value == 155
    release = api.repository.entries()[-1]
    assert (release.action, release.old_value, release.new_value) == ("release", reserved, 155)


async def test_the_fiscal_year_starts_where_the_setting_says() -> None:
    """IDMANAGER_FISCAL_YEAR_START=4: April 2026 to March 2027 is FY2027, as the library's
    ``ServiceOptions(fiscal_year_start=4)`` names it."""
    for start, expected in ((1, "INV2026-AAA0001"), (4, "INV2027-AAA0001")):
        async with serve(fiscal_year_start=start, period_window_days=None) as api:
            response = await api.http.post(
                "/api/v1/prefixes/INV{FY}/ids", params={"date": "2026-05-01"}
            )
            assert response.json()["ids"] == [expected], response.text
