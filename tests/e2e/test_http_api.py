"""Every route of the HTTP service, on SQLite and PostgreSQL, through a real server."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from conftest import Keys

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["instance"] == response.request.url.raw_path.decode().split("?")[0]
    assert {"type", "title", "status", "detail", "instance"} <= body.keys()
    if kind is not None:
        assert body["type"] == f"urn:idmanager:problem:{kind}"
    return body


def test_allocate_one_then_a_bulk(http: httpx.Client, keys: Keys, prefix: str) -> None:
    first = http.post(f"/api/v1/prefixes/{prefix.lower()}/ids", headers=keys.header("generate"))
    assert first.status_code == 201
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"prefix": prefix, "ids": [f"{prefix}-AAA0001"], "count": 1}

    bulk = http.post(
        f"/api/v1/prefixes/{prefix}/ids", params={"count": 3}, headers=keys.header("generate")
    ).json()
    assert bulk == {
        "prefix": prefix,
        "ids": [f"{prefix}-AAA0002", f"{prefix}-AAA0003", f"{prefix}-AAA0004"],
        "count": 3,
    }


def test_large_bulk_is_streamed_and_crosses_letter_blocks(
    http: httpx.Client, keys: Keys, prefix: str
) -> None:
    response = http.post(
        f"/api/v1/prefixes/{prefix}/ids", params={"count": 25_000}, headers=keys.header("admin")
    )
    assert response.status_code == 201
    assert "content-length" not in response.headers  # streamed, chunk by chunk
    body = json.loads(response.content)
    ids = body["ids"]
    assert body["count"] == len(ids) == 25_000
    assert len(set(ids)) == 25_000
    assert ids[0] == f"{prefix}-AAA0001"
    assert ids[9998:10000] == [f"{prefix}-AAA9999", f"{prefix}-AAB0001"]
    assert ids[-1] == f"{prefix}-AAC5002"


def test_count_above_the_limit_names_it(
    http: httpx.Client, keys: Keys, prefix: str, max_bulk: int
) -> None:
    response = http.post(
        f"/api/v1/prefixes/{prefix}/ids",
        params={"count": max_bulk + 1},
        headers=keys.header("generate"),
    )
    body = assert_problem(response, 422, "invalid-count")
    assert f"{max_bulk:,}" in body["detail"]
    assert http.get(f"/api/v1/prefixes/{prefix}", headers=keys.header("read")).status_code == 404


def test_count_below_one_and_not_a_number(http: httpx.Client, keys: Keys, prefix: str) -> None:
    for count in ("0", "-5", "abc", "1.5", "99999999999999999999999999"):
        response = http.post(
            f"/api/v1/prefixes/{prefix}/ids",
            params={"count": count},
            headers=keys.header("generate"),
        )
        assert_problem(response, 422)


def test_concurrent_requests_never_duplicate(http: httpx.Client, keys: Keys, prefix: str) -> None:
    def allocate(_: int) -> list[str]:
        response = http.post(
            f"/api/v1/prefixes/{prefix}/ids",
            params={"count": 5},
            headers=keys.header("generate"),
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


def test_scopes_are_separate_sequences(http: httpx.Client, keys: Keys, prefix: str) -> None:
    url = f"/api/v1/prefixes/{prefix}/ids"
    a = http.post(url, params={"scope": "tenant-a"}, headers=keys.header("generate")).json()
    b = http.post(url, params={"scope": "tenant-b"}, headers=keys.header("generate")).json()
    assert a["ids"] == b["ids"] == [f"{prefix}-AAA0001"]
    listed = http.get(
        "/api/v1/prefixes", params={"scope": "tenant-a"}, headers=keys.header("read")
    ).json()
    assert [(p["prefix"], p["scope"]) for p in listed["items"]] == [(prefix, "tenant-a")]


def test_period_templates_resolve_from_the_date(
    http: httpx.Client, keys: Keys, prefix: str
) -> None:
    template = quote(prefix + "{YYYY}")
    url = f"/api/v1/prefixes/{template}/ids"
    generate = keys.header("generate")
    december = http.post(url, params={"date": "2026-12-31"}, headers=generate).json()
    january = http.post(url, params={"date": "2027-01-01"}, headers=generate).json()
    back_dated = http.post(url, params={"date": "2026-05-01"}, headers=generate).json()
    assert december == {"prefix": f"{prefix}2026", "ids": [f"{prefix}2026-AAA0001"], "count": 1}
    assert january["ids"] == [f"{prefix}2027-AAA0001"]
    assert back_dated["ids"] == [f"{prefix}2026-AAA0002"]
    stats = http.get(
        f"/api/v1/prefixes/{template}", params={"date": "2026-01-01"}, headers=keys.header("read")
    ).json()
    assert (stats["prefix"], stats["latest_id"]) == (f"{prefix}2026", f"{prefix}2026-AAA0002")
    bad = http.post(f"/api/v1/prefixes/{quote(prefix + '{XX}')}/ids", headers=generate)
    assert bad.status_code == 422
    assert "Unknown date token {XX}" in bad.json()["detail"]
    not_a_date = http.post(url, params={"date": "2026-13-01"}, headers=generate)
    assert not_a_date.status_code == 422


def test_stats_of_a_prefix(http: httpx.Client, keys: Keys, prefix: str) -> None:
    assert_problem(
        http.get(f"/api/v1/prefixes/{prefix}", headers=keys.header("read")), 404, "prefix-not-found"
    )
    http.post(
        f"/api/v1/prefixes/{prefix}/ids", params={"count": 42}, headers=keys.header("generate")
    )
    stats = http.get(f"/api/v1/prefixes/{prefix}", headers=keys.header("read")).json()
    assert stats["prefix"] == prefix
    assert stats["exists"] is True
    assert stats["latest_id"] == f"{prefix}-AAA0042"
    assert stats["next_id"] == f"{prefix}-AAA0043"
    assert stats["count_issued"] == 42
    assert stats["is_active"] is True
    assert stats["format"] == {"separator": "-", "letter_width": 3, "digit_width": 4}
    assert stats["created_at"] and stats["updated_at"]
    assert 0 < stats["width_usage"] < 0.01
    assert stats["warning"] is None


def test_list_prefixes_pages_and_filters(
    http: httpx.Client, keys: Keys, new_prefix: Callable[[str], str]
) -> None:
    scope = "list-" + new_prefix("S")
    names = sorted(new_prefix("L") for _ in range(3))
    for name in names:
        http.post(
            f"/api/v1/prefixes/{name}/ids", params={"scope": scope}, headers=keys.header("admin")
        )
    http.put(
        f"/api/v1/prefixes/{names[1]}",
        params={"scope": scope},
        json={"is_active": False},
        headers=keys.header("admin"),
    )
    read = keys.header("read")
    everything = http.get("/api/v1/prefixes", params={"scope": scope}, headers=read).json()
    assert [p["prefix"] for p in everything["items"]] == names
    assert (everything["skip"], everything["limit"]) == (0, 100)
    page = http.get(
        "/api/v1/prefixes", params={"scope": scope, "skip": 1, "limit": 1}, headers=read
    ).json()
    assert [p["prefix"] for p in page["items"]] == names[1:2]
    active = http.get(
        "/api/v1/prefixes", params={"scope": scope, "active_only": "true"}, headers=read
    ).json()
    assert [p["prefix"] for p in active["items"]] == [names[0], names[2]]
    all_scopes = http.get("/api/v1/prefixes", params={"limit": 1000}, headers=read).json()
    assert "_HEALTH_CHECK_" not in {p["prefix"] for p in all_scopes["items"]}
    for bad in ({"skip": -1}, {"limit": 0}, {"limit": 1001}, {"active_only": "maybe"}):
        assert_problem(http.get("/api/v1/prefixes", params=bad, headers=read), 422)


def test_configure_registers_and_sets_format(http: httpx.Client, keys: Keys, prefix: str) -> None:
    admin = keys.header("admin")
    fmt = {"separator": "/", "letter_width": 0, "digit_width": 6}
    created = http.put(f"/api/v1/prefixes/{prefix}", json={"format": fmt}, headers=admin)
    assert created.status_code == 200, created.text
    assert created.json()["format"] == fmt
    assert created.json()["next_id"] == f"{prefix}/000001"
    ids = http.post(f"/api/v1/prefixes/{prefix}/ids", params={"count": 2}, headers=admin).json()
    assert ids["ids"] == [f"{prefix}/000001", f"{prefix}/000002"]
    # The format is fixed once IDs were issued.
    locked = http.put(f"/api/v1/prefixes/{prefix}", json={"format": {}}, headers=admin)
    assert_problem(locked, 409, "format-locked")
    # An ID with a '/' separator is parsed in the stored format.
    parsed = http.get(f"/api/v1/ids/{prefix}/2", headers=keys.header("read")).json()
    assert parsed["normalized"] == f"{prefix}/000002"
    assert parsed["ordinal"] == 2


def test_configure_latest_id_and_activation(http: httpx.Client, keys: Keys, prefix: str) -> None:
    admin = keys.header("admin")
    moved = http.put(
        f"/api/v1/prefixes/{prefix}", json={"latest_id": f"{prefix}-AAB0100"}, headers=admin
    )
    assert moved.json()["next_id"] == f"{prefix}-AAB0101"
    backwards = http.put(
        f"/api/v1/prefixes/{prefix}", json={"latest_id": f"{prefix}-AAA0001"}, headers=admin
    )
    assert_problem(backwards, 409, "reset-refused")
    off = http.put(f"/api/v1/prefixes/{prefix}", json={"is_active": False}, headers=admin)
    assert off.json()["is_active"] is False
    refused = http.post(f"/api/v1/prefixes/{prefix}/ids", headers=keys.header("generate"))
    body = assert_problem(refused, 409, "prefix-inactive")
    assert prefix in body["detail"]
    http.put(f"/api/v1/prefixes/{prefix}", json={"is_active": True}, headers=admin)
    again = http.post(f"/api/v1/prefixes/{prefix}/ids", headers=keys.header("generate"))
    assert again.json()["ids"] == [f"{prefix}-AAB0101"]


def test_configure_rejects_bad_bodies(http: httpx.Client, keys: Keys, prefix: str) -> None:
    admin = keys.header("admin")
    url = f"/api/v1/prefixes/{prefix}"
    assert_problem(http.put(url, json={"format": {"separator": "*"}}, headers=admin), 422)
    assert_problem(http.put(url, json={"format": {"digit_width": 0}}, headers=admin), 422)
    assert_problem(http.put(url, json={"unknown": 1}, headers=admin), 422)
    assert_problem(http.put(url, json={"latest_id": "garbage"}, headers=admin), 422)
    malformed = http.put(
        url, content=b"{not json", headers={**admin, "content-type": "application/json"}
    )
    assert_problem(malformed, 400, "bad-json")


def test_reset(http: httpx.Client, keys: Keys, prefix: str) -> None:
    admin = keys.header("admin")
    http.post(f"/api/v1/prefixes/{prefix}/ids", params={"count": 7}, headers=admin)
    url = f"/api/v1/prefixes/{prefix}/reset"
    forward = http.post(url, json={"reset_to": f"{prefix}-ZZZ9999"}, headers=admin)
    assert forward.status_code == 200, forward.text
    assert forward.json() == {
        "prefix": prefix,
        "scope": "",
        "previous_id": f"{prefix}-AAA0007",
        "latest_id": f"{prefix}-ZZZ9999",
        "next_id": f"{prefix}-AAAA0001",
        "forced": False,
        "dry_run": False,
    }
    backwards = http.post(url, json={"reset_to": None}, headers=admin)
    assert_problem(backwards, 409, "reset-refused")
    dry = http.post(url, json={"reset_to": None, "force": True, "dry_run": True}, headers=admin)
    assert dry.json()["next_id"] == f"{prefix}-AAA0001"
    assert dry.json()["dry_run"] is True
    ids = http.post(f"/api/v1/prefixes/{prefix}/ids", headers=admin).json()["ids"]
    assert ids == [f"{prefix}-AAAA0001"]  # the dry run changed nothing
    forced = http.post(url, json={"reset_to": None, "force": True}, headers=admin)
    assert forced.json()["latest_id"] is None
    assert http.post(f"/api/v1/prefixes/{prefix}/ids", headers=admin).json()["ids"] == [
        f"{prefix}-AAA0001"
    ]
    other = http.post(url, json={"reset_to": "OTHER-AAA0001", "force": True}, headers=admin)
    assert f"must start with '{prefix}-'" in assert_problem(other, 422, "invalid-id")["detail"]


def test_reset_of_an_unknown_prefix_creates_it(
    http: httpx.Client, keys: Keys, new_prefix: Callable[[str], str]
) -> None:
    prefix = new_prefix("TEST")
    response = http.post(
        f"/api/v1/prefixes/{prefix}/reset",
        json={"reset_to": f"{prefix}-ZZZ9999"},
        headers=keys.header("admin"),
    )
    assert response.json()["next_id"] == f"{prefix}-AAAA0001"


def test_parse_ids(http: httpx.Client, keys: Keys) -> None:
    read = keys.header("read")
    parsed = http.get("/api/v1/ids/cus-aab12", headers=read).json()
    assert parsed == {
        "prefix": "CUS",
        "letters": "AAB",
        "number": 12,
        "ordinal": 10011,
        "normalized": "CUS-AAB0012",
        "corrected": True,
    }
    exact = http.get("/api/v1/ids/CUS-AAA0001", headers=read).json()
    assert (exact["ordinal"], exact["corrected"]) == (1, False)
    zero = http.get("/api/v1/ids/CUS-AAB0000", headers=read).json()
    assert zero["normalized"] == "CUS-AAA9999"
    for bad in ("CUS", "CUS-0001", "CUS-AAA", "CUS-AAA99999", "-AAA0001", "CUS-ÄAA0001", "C%0A-A"):
        body = assert_problem(http.get(f"/api/v1/ids/{bad}", headers=read), 422, "invalid-id")
        assert body["detail"]


def test_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["message"] == "ID Manager service is operational"
    assert body["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"
    assert body["timestamp"].endswith("Z")
    assert isinstance(body["prefix_count"], int)
    # It leaves nothing behind: running it again gives the same test ID.
    assert http.get("/health").json()["test_id_generated"] == "_HEALTH_CHECK_-AAA0001"
    assert http.get("/health/live").json() == {"status": "alive"}
