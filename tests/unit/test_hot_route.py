"""The allocation route's plain path (api/plain.py): plain requests are answered before the
app's stack, the rest by FastAPI.

Whichever path a request takes, it gets the same answer: each case here is sent as a plain
request and as a twin FastAPI must solve (a count written ``01``), and the two answers match,
headers included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fastapi.routing
import pytest

from .asgi import Api, assert_problem, serve

URL = "/api/v1/prefixes/{}/ids"


def _answer(response: Any) -> tuple[int, Any]:
    body = response.json()
    if isinstance(body, dict):
        body.pop("instance", None)
    return response.status_code, body


def _headers(response: Any) -> dict[str, str]:
    """The headers a client reads (the length differs with the IDs' own)."""
    return {k: v for k, v in response.headers.items() if k != "content-length"}


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
    assert _headers(plain) == _headers(twin)
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
    solved = _count_solving(monkeypatch)
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


async def test_a_keyed_request_is_plain_and_replays_as_fastapi_does(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved = _count_solving(monkeypatch)
    headers = {**api.headers("generate"), "Idempotency-Key": "k-1"}
    first = await api.http.post(URL.format("KEYED"), headers=headers)
    again = await api.http.post(URL.format("KEYED"), headers=headers)
    assert solved == []
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.headers["idempotent-replayed"] == "false"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    # The same key with another request: refused, on either path alike.
    other = await api.http.post(URL.format("KEYED"), params={"count": "2"}, headers=headers)
    twin = await api.http.post(URL.format("KEYED"), params={"count": "02"}, headers=headers)
    assert solved == [URL.format("KEYED")]
    assert _answer(other) == _answer(twin)
    assert other.status_code == 422


@pytest.mark.parametrize(
    ("extra", "query"),
    [
        ({"Content-Type": "application/json", "Content-Length": "2"}, ""),  # a body
        ({"Transfer-Encoding": "chunked"}, ""),
        ({}, "count=10001"),  # above STREAM_ABOVE: streamed by the route
        ({}, "count=1234567890"),
    ],
)
async def test_what_else_goes_through_fastapi(
    api: Api, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], query: str
) -> None:
    solved = _count_solving(monkeypatch)
    headers = {**api.headers("admin"), **extra}

    async def chunked() -> AsyncIterator[bytes]:
        yield b"{}"

    content: Any = b"{}" if extra.get("Content-Length") == "2" else None
    if "Transfer-Encoding" in extra:
        content = chunked()
    url = URL.format("ELSE") + ("?" + query if query else "")
    await api.http.post(url, headers=headers, content=content)
    assert solved == [URL.format("ELSE")]


async def test_an_empty_declared_body_is_plain(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    solved = _count_solving(monkeypatch)
    response = await api.http.post(
        URL.format("EMPTY"), headers={**api.headers("generate"), "Content-Length": "0"}
    )
    assert response.status_code == 201, response.text
    assert solved == []


async def test_repeated_names_count_as_starlette_counts_them(api: Api) -> None:
    # The last of repeated query names, the first of repeated headers.
    generate, read = api.headers("generate"), api.headers("read")
    path = URL.format("TWICE")
    for query in ("count=1&count=2", "count=01&count=2"):  # plain, then solved
        response = await api.http.post(path + "?" + query, headers=generate)
        assert response.json()["count"] == 2
    for query in ("", "count=01"):
        response = await api.http.post(
            path + ("?" + query if query else ""),
            headers=[("Authorization", read["Authorization"]), *generate.items()],
        )
        assert response.status_code == 403, response.text


async def test_the_guard_judges_plain_requests_too(api: Api, keys: Any) -> None:
    generate = api.headers("generate")
    # A page of this service's own site may allocate; another site's may not.
    for own in ({"Origin": "http://localhost"}, {"Sec-Fetch-Site": "same-origin"}):
        response = await api.http.post(URL.format("SITE"), headers={**generate, **own})
        assert response.status_code == 201, response.text
    response = await api.http.post(
        URL.format("SITE"), headers={**generate, "Origin": "http://evil.example"}
    )
    assert_problem(response, 403, "cross-site-request")
    assert api.repository.rows["", "SITE"].last_value == 2
    async with serve(keys, allowed_hosts=["ids.example"]) as elsewhere:
        response = await elsewhere.http.post(URL.format("HOST"), headers=generate)
        assert_problem(response, 400, "host-not-allowed")
        assert elsewhere.repository.rows == {}


def _count_solving(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every request FastAPI solves from now on."""
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return solved
