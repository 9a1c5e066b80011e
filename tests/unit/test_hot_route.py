"""The allocation route's hot path: plain requests are read by hand, the rest by FastAPI.

Whichever path a request takes, it gets the same answer: each case here is sent as a plain
request and as a twin FastAPI must solve (a count written ``01``), and the two answers match.
"""

from __future__ import annotations

from typing import Any

import fastapi.routing
import pytest

from .asgi import Api

URL = "/api/v1/prefixes/{}/ids"


def _answer(response: Any) -> tuple[int, Any]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("instance", None)
    return response.status_code, body


@pytest.mark.parametrize(
    ("role", "params"),
    [
        ("generate", {}),
        ("admin", {"scope": "acme"}),
        (None, {}),  # no key: 401, before anything is read
        ("wrong", {"date": "2026-02-30"}),  # a bad key, whatever the query
        ("read", {}),  # too weak: 403
        ("generate", {"scope": "a b"}),  # invalid-scope, from the domain
        ("generate", {"date": "2026-02-30"}),  # not a calendar date
        ("generate", {"date": "2026-01-01"}),  # not a template: the date is not used
        ("generate", {"scope": "x" * 255}),
    ],
)
async def test_a_plain_request_and_its_solved_twin_get_the_same_answer(
    api: Api, role: str | None, params: dict[str, str]
) -> None:
    headers = api.headers(role)
    plain = await api.http.post(URL.format("HOT"), params={**params}, headers=headers)
    twin = await api.http.post(URL.format("HOT"), params={**params, "count": "01"}, headers=headers)
    status, body = _answer(plain)
    twin_status, twin_body = _answer(twin)
    assert status == twin_status, (plain.text, twin.text)
    if status == 201:
        assert (body["count"], len(body["ids"])) == (twin_body["count"], 1)
        assert twin_body["ids"][0] > body["ids"][0]  # the next ID
    else:
        assert body == twin_body


@pytest.mark.parametrize(
    "query",
    ["count=0", "count=abc", "count=", "count=1e3", "scope=" + "x" * 256, "date=2026-1-1"],
)
async def test_what_is_not_plain_is_validated_by_fastapi(api: Api, query: str) -> None:
    response = await api.http.post(URL.format("HOT") + "?" + query, headers=api.headers("generate"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][0] == "query"


async def test_a_date_with_a_line_break_is_not_plain(api: Api) -> None:
    # Python's "$" would let "\n" through; the declared pattern does not.
    response = await api.http.post(
        URL.format("HOT"), params={"date": "2026-01-01\n"}, headers=api.headers("generate")
    )
    assert response.status_code == 422, response.text


async def test_plain_requests_are_not_solved_by_fastapi(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    generate = api.headers("generate")
    for params in ({}, {"count": "3"}, {"count": "2", "scope": "acme", "date": "2026-03-01"}):
        response = await api.http.post(URL.format("HOT"), params=params, headers=generate)
        assert response.status_code == 201, response.text
    assert solved == []
    await api.http.post(URL.format("HOT"), params={"count": "03"}, headers=generate)
    assert solved == [URL.format("HOT")]


async def test_the_answer_is_the_json_of_its_ids(api: Api) -> None:
    response = await api.http.post(
        URL.format("cus"), params={"count": "3"}, headers=api.headers("generate")
    )
    assert response.headers["content-type"] == "application/json"
    assert response.content == (
        b'{"prefix":"CUS","ids":["CUS-AAA0001","CUS-AAA0002","CUS-AAA0003"],"count":3}'
    )
