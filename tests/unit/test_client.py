"""The Python client in-process: every method against the app over the fake, and its retry
policy, URLs and errors against ``httpx.MockTransport``, with a recording sleep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api_keys import Keys
from idmanager import (
    AuditPage,
    BusyError,
    ConflictError,
    FormatLockedError,
    IdFormat,
    IdManagerError,
    InvalidCountError,
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    ParsedId,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    ResetResult,
    SequenceStats,
    StorageError,
)
from idmanager.client import (
    AccessDeniedError,
    ApiError,
    AsyncIdManagerClient,
    IdManagerClient,
    ServiceUnreachableError,
)
from idmanager.domain.errors import ForbiddenError, NotAuthenticatedError
from idmanager.problems import KINDS, PROBLEM_JSON, kind

from .asgi import BASE_URL, Api, sync_transport
from .fakes import AsyncFakeTransactions

# -- every method, against the app ------------------------------------------------------------


@pytest.fixture
def sync_app(app: FastAPI) -> Iterator[httpx.BaseTransport]:
    """A sync transport to the app over an empty fake (max 50,000 IDs a request)."""
    with sync_transport(app) as transport:
        yield transport


def connect(api: Api, key: str) -> AsyncIdManagerClient:
    return AsyncIdManagerClient(BASE_URL, api_key=key, transport=httpx.ASGITransport(app=api.app))


def test_sync_client_tour(
    sync_app: httpx.BaseTransport, shared_app: tuple[FastAPI, AsyncFakeTransactions], keys: Keys
) -> None:
    store = shared_app[1]
    with IdManagerClient(BASE_URL, api_key=keys.admin, transport=sync_app) as client:
        assert client.generate_id("cus") == "CUS-AAA0001"
        assert client.bulk_generate_ids("CUS", 3) == ["CUS-AAA0002", "CUS-AAA0003", "CUS-AAA0004"]
        stats = client.get_prefix_stats("CUS")
        # The typed result, every field read back as the server's storage holds it.
        assert stats == SequenceStats.of(store.repository.rows["", "CUS"])
        assert (stats.prefix, stats.latest_id, stats.next_id) == (
            "CUS",
            "CUS-AAA0004",
            "CUS-AAA0005",
        )
        assert stats.count_issued == 4 and stats.is_active and stats.exists
        assert stats.format == IdFormat()
        assert stats.created_at is not None and stats.created_at.tzinfo is not None
        assert stats.template is None
        assert stats.created_by is not None and stats.created_by.startswith("api-key:")
        assert [p.prefix for p in client.list_prefixes()] == ["CUS"]

        result = client.reset_sequence("CUS", "CUS-AAA0100")
        assert result == ResetResult(
            "CUS", "", "CUS-AAA0004", "CUS-AAA0100", "CUS-AAA0101", False, False
        )
        with pytest.raises(ResetRefusedError, match="backwards"):
            client.reset_sequence("CUS", None)
        dry = client.reset_sequence("CUS", None, force=True, dry_run=True)
        assert dry.dry_run and dry.forced and dry.next_id == "CUS-AAA0001"
        with pytest.raises(InvalidIdError):
            client.reset_sequence("CUS", "garbage")

        assert client.parse_id("cus-aab12") == ParsedId("CUS", "AAB", 12, 10011, "CUS-AAB0012")
        page = client.list_audit(prefix="CUS")
        assert isinstance(page, AuditPage)
        assert [(r.action.value, r.new_id) for r in page.items] == [
            ("reset", "CUS-AAA0100"),
            ("create", "CUS-AAA0001"),
        ]
        report = client.health()
        assert report.healthy and report.error_type is None

        with pytest.raises(PrefixNotFoundError):
            client.get_prefix_stats("NOPE")
        with pytest.raises(InvalidCountError, match="50,000"):
            client.bulk_generate_ids("CUS", 50_001)
        with pytest.raises(InvalidPrefixError, match="uppercase letters"):
            client.generate_id("bad prefix!")
        with pytest.raises(FormatLockedError):
            client.configure_prefix("CUS", fmt=IdFormat(separator="."))
        off = client.configure_prefix("CUS", is_active=False)
        assert off.is_active is False
        with pytest.raises(PrefixInactiveError):
            client.generate_id("CUS")


async def test_async_client_tour(api: Api, keys: Keys) -> None:
    async with connect(api, keys.admin) as client:
        assert await client.generate_id("CUS") == "CUS-AAA0001"
        assert await client.bulk_generate_ids("CUS", 2, scope="t1") == [
            "CUS-AAA0001",
            "CUS-AAA0002",
        ]
        stats = await client.get_prefix_stats("CUS", scope="t1")
        assert (stats.count_issued, stats.scope) == (2, "t1")
        assert [(p.scope, p.prefix) for p in await client.list_prefixes(scope="t1")] == [
            ("t1", "CUS")
        ]
        assert [p.scope for p in await client.list_prefixes(search="CU")] == ["", "t1"]

        fmt = IdFormat(separator="", letter_width=0, digit_width=5)
        configured = await client.configure_prefix("NUM", fmt=fmt)
        assert (configured.next_id, configured.format) == ("NUM00001", fmt)
        assert configured.created_by is not None and configured.created_by.startswith("api-key:")
        assert await client.generate_id("NUM") == "NUM00001"
        parsed = await client.parse_id("NUM7", prefix="NUM")
        assert parsed.normalized == "NUM00007"

        reset = await client.reset_sequence("CUS", "CUS-ZZZ9999")
        assert reset.next_id == "CUS-AAAA0001"
        with pytest.raises(ResetRefusedError):
            await client.reset_sequence("CUS", None)
        with pytest.raises(PrefixNotFoundError):
            await client.get_prefix_stats("NONE")
        assert (await client.health()).healthy


async def test_period_templates_resolve_from_the_documents_date(api: Api, keys: Keys) -> None:
    async with connect(api, keys.generate) as client:
        assert await client.generate_id("INV{YYYY}", on=date(2026, 12, 31)) == "INV2026-AAA0001"
        assert await client.bulk_generate_ids("INV{YYYY}", 2, on=date(2027, 1, 1)) == [
            "INV2027-AAA0001",
            "INV2027-AAA0002",
        ]
        stats = await client.get_prefix_stats("INV{YYYY}", on=date(2026, 6, 1))
        assert (stats.prefix, stats.template, stats.count_issued) == ("INV2026", "INV{YYYY}", 1)
        periods = await client.list_prefixes(template="INV{YYYY}")
        assert [p.prefix for p in periods] == ["INV2026", "INV2027"]


async def test_the_audit_trail_pages_through_the_client(api: Api, keys: Keys) -> None:
    async with connect(api, keys.admin) as client:
        for n in range(1, 6):
            await client.reset_sequence("CUS", f"CUS-AAA000{n}")
        seen: list[str | None] = []
        page = await client.list_audit(action="reset", limit=2)
        while True:
            seen += [record.new_id for record in page.items]
            if page.next_cursor is None:
                break
            page = await client.list_audit(action="reset", limit=2, before=page.next_cursor)
        assert seen == [f"CUS-AAA000{n}" for n in range(5, 0, -1)]
        mine = await client.list_audit(actor=page.items[0].actor)
        assert len(mine.items) == 6  # the five resets and the registration they made


async def test_roles_arrive_as_access_errors(api: Api, keys: Keys) -> None:
    async with connect(api, keys.generate) as client:
        assert await client.generate_id("CUS") == "CUS-AAA0001"
        with pytest.raises(ForbiddenError, match="'admin' role"):
            await client.reset_sequence("CUS", None, force=True)
    async with connect(api, keys.read) as client:
        assert (await client.get_prefix_stats("CUS")).count_issued == 1
        with pytest.raises(ForbiddenError, match="'generate' role"):
            await client.generate_id("CUS")
    async with connect(api, "x" * 24) as client:
        with pytest.raises(NotAuthenticatedError) as raised:
            await client.get_prefix_stats("CUS")
        assert isinstance(raised.value, AccessDeniedError | PermissionError)


async def test_a_hostile_id_stays_one_path_segment(api: Api, keys: Keys) -> None:
    async with connect(api, keys.read) as client:
        # Had '/' gone unencoded this would reach GET /api/v1/prefixes/MTX instead.
        with pytest.raises(InvalidIdError, match="prefixes/MTX"):
            await client.parse_id("../prefixes/MTX")


# -- URLs, retries and errors, against a mock transport ---------------------------------------


class Server:
    """A scripted server: answers in turn (the last one repeats), every request recorded."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, **options: Any) -> IdManagerClient:
        return IdManagerClient(
            BASE_URL,
            transport=httpx.MockTransport(self.handle),
            sleep=self.sleeps.append,
            **options,
        )

    def async_client(self, **options: Any) -> AsyncIdManagerClient:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return AsyncIdManagerClient(
            BASE_URL, transport=httpx.MockTransport(self.handle), sleep=sleep, **options
        )

    @property
    def paths(self) -> list[str]:
        """The paths requested, as sent (still percent-encoded), without the query."""
        return [request.url.raw_path.decode().partition("?")[0] for request in self.requests]


def problem(name: str, detail: str | None = None, **headers: str) -> httpx.Response:
    found = kind(name)
    if found.retry_after is not None:
        headers.setdefault("Retry-After", str(found.retry_after))
    body = {
        "type": found.type,
        "title": found.title,
        "status": found.status,
        "detail": detail or found.example,
        "instance": "/api/v1/prefixes/CUS/ids",
    }
    return httpx.Response(
        found.status, json=body, headers={"content-type": PROBLEM_JSON, **headers}
    )


def allocated(*ids: str) -> httpx.Response:
    return httpx.Response(201, json={"prefix": "CUS", "ids": list(ids), "count": len(ids)})


HEALTHY = {"status": "healthy", "message": "ok", "timestamp": "2026-01-01T00:00:00.000Z"}


@pytest.mark.parametrize(
    ("call", "path"),
    [
        (lambda c: c.parse_id("../prefixes/MTX"), "/api/v1/ids/..%2Fprefixes%2FMTX"),
        (lambda c: c.parse_id("CUS/7"), "/api/v1/ids/CUS%2F7"),
        (lambda c: c.generate_id(".."), "/api/v1/prefixes/%2E%2E/ids"),
        (lambda c: c.generate_id("."), "/api/v1/prefixes/%2E/ids"),
        (lambda c: c.get_prefix_stats("a/b?c#d"), "/api/v1/prefixes/a%2Fb%3Fc%23d"),
        (lambda c: c.get_prefix_stats("INV{YYYY}"), "/api/v1/prefixes/INV%7BYYYY%7D"),
        (lambda c: c.reset_sequence("A B"), "/api/v1/prefixes/A%20B/reset"),
    ],
    ids=["dot-dot-slash", "slash", "dot-dot", "dot", "query-fragment", "template", "space"],
)
def test_each_argument_is_one_path_segment(call: Callable[[Any], Any], path: str) -> None:
    server = Server(httpx.Response(500))
    with server.client(retries=0) as client, pytest.raises(ApiError):
        call(client)
    assert server.paths == [path]


def test_requests_carry_the_key_and_the_parameters() -> None:
    server = Server(allocated("INV2026-AAA0001", "INV2026-AAA0002"))
    with server.client(api_key="s3cret-app-key-0001") as client:
        client.bulk_generate_ids("INV{YYYY}", 2, scope="acme", on=date(2026, 12, 31))
    with server.client() as anonymous:
        anonymous.generate_id("CUS")
    sent, unsigned = server.requests
    assert sent.method == "POST"
    assert sent.headers["authorization"] == "Bearer s3cret-app-key-0001"
    assert dict(sent.url.params) == {"count": "2", "scope": "acme", "date": "2026-12-31"}
    assert "authorization" not in unsigned.headers


def test_a_busy_sequence_is_retried_after_the_time_the_server_asks() -> None:
    busy = problem("sequence-busy", **{"Retry-After": "2"})
    server = Server(busy, busy, allocated("CUS-AAA0001"))
    with server.client(retries=3, backoff=0.1, max_backoff=5) as client:
        assert client.generate_id("CUS") == "CUS-AAA0001"
    assert len(server.requests) == 3
    # Retry-After (2 s) outweighs the backoff; each wait is jittered within its upper half.
    assert len(server.sleeps) == 2 and all(1.0 <= s <= 2.0 for s in server.sleeps)


def test_503s_are_retried_a_bounded_number_of_times_with_growing_waits() -> None:
    server = Server(problem("storage-unavailable", **{"Retry-After": "0"}))
    with (
        server.client(retries=4, backoff=0.1, max_backoff=0.5) as client,
        pytest.raises(StorageError) as raised,
    ):
        client.generate_id("CUS")
    # The service answered: the error is its problem, not "unreachable".
    assert not isinstance(raised.value, ServiceUnreachableError)
    assert str(raised.value) == kind("storage-unavailable").example
    assert len(server.requests) == 5
    ceilings = [0.1, 0.2, 0.4, 0.5]  # doubling, capped by max_backoff
    assert len(server.sleeps) == 4
    for waited, ceiling in zip(server.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= waited <= ceiling


def test_a_sequence_busy_until_the_end_raises_busy() -> None:
    server = Server(problem("sequence-busy"))
    with server.client(retries=2, backoff=0.01) as client, pytest.raises(BusyError):
        client.bulk_generate_ids("CUS", 5)
    assert len(server.requests) == 3


def test_connection_failures_are_retried_then_unreachable() -> None:
    refused = httpx.ConnectError("connection refused")
    server = Server(refused)
    with (
        server.client(retries=2, backoff=0.01) as client,
        pytest.raises(ServiceUnreachableError) as raised,
    ):
        client.generate_id("CUS")
    assert isinstance(raised.value, StorageError)
    assert raised.value.__cause__ is refused
    assert len(server.requests) == 3 and len(server.sleeps) == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("timed out"),
        httpx.RemoteProtocolError("server closed the connection"),
        httpx.ReadError("reset by peer"),
        httpx.WriteError("broken pipe"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_lost_connection_is_retried_and_the_call_succeeds(failure: Exception) -> None:
    server = Server(failure, allocated("CUS-AAA0001"))
    with server.client(retries=1, backoff=0.01) as client:
        assert client.generate_id("CUS") == "CUS-AAA0001"
    assert len(server.requests) == 2 and len(server.sleeps) == 1


@pytest.mark.parametrize(
    "name",
    [k.kind for k in KINDS if 400 <= k.status < 500],
)
def test_a_4xx_is_never_retried(name: str) -> None:
    server = Server(problem(name))
    with server.client(retries=5) as client, pytest.raises(IdManagerError):
        client.generate_id("CUS")
    assert len(server.requests) == 1 and server.sleeps == []


def test_without_retries_one_attempt() -> None:
    server = Server(problem("storage-unavailable"))
    with server.client(retries=0) as client, pytest.raises(StorageError):
        client.generate_id("CUS")
    assert len(server.requests) == 1 and server.sleeps == []
    with pytest.raises(ValueError, match="negative"):
        IdManagerClient(BASE_URL, retries=-1)


def test_an_unhealthy_service_is_a_report_not_an_error() -> None:
    unhealthy = {
        **HEALTHY,
        "status": "unhealthy",
        "message": "ID Manager service error: down",
        "error_type": "StorageError",
    }
    server = Server(httpx.Response(503, json=unhealthy))
    with server.client(retries=3) as client:
        report = client.health()
    assert not report.healthy
    assert (report.error_type, report.prefix_count) == ("StorageError", None)
    assert len(server.requests) == 1  # a health check reports now; it does not wait
    # A problem on /health (a proxy's, say) is an error all the same.
    proxy = Server(problem("storage-unavailable"))
    with proxy.client() as client, pytest.raises(StorageError):
        client.health()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInputError),
        (401, NotAuthenticatedError),
        (403, ForbiddenError),
        (409, ConflictError),
        (413, InvalidInputError),
        (422, InvalidInputError),
        (503, StorageError),
    ],
)
def test_an_unknown_problem_type_falls_back_on_its_status(
    status: int, error: type[IdManagerError]
) -> None:
    body = {"type": "urn:example:new-kind", "title": "Something new", "status": status}
    server = Server(httpx.Response(status, json=body, headers={"content-type": PROBLEM_JSON}))
    with server.client(retries=0) as client, pytest.raises(IdManagerError) as raised:
        client.generate_id("CUS")
    assert type(raised.value) is error
    assert str(raised.value) == "Something new"


def test_a_404_that_is_no_registry_problem_is_not_a_missing_prefix() -> None:
    """A wrong base URL, or a proxy's own page, answers 404 without naming a prefix."""
    for body in ({"type": "about:blank", "title": "Not Found", "status": 404}, None):
        answer = httpx.Response(404, json=body) if body else httpx.Response(404, text="nope")
        with Server(answer).client(retries=0) as client, pytest.raises(ApiError) as raised:
            client.generate_id("CUS")
        assert not isinstance(raised.value, PrefixNotFoundError)
        assert raised.value.status == 404


def test_an_answer_that_is_no_known_problem_is_an_api_error() -> None:
    teapot = {"type": "urn:example:teapot", "title": "I'm a teapot", "status": 418}
    server = Server(httpx.Response(418, json=teapot))
    with server.client(retries=0) as client, pytest.raises(ApiError) as raised:
        client.generate_id("CUS")
    assert (raised.value.status, raised.value.problem) == (418, teapot)
    assert str(raised.value) == "HTTP 418: I'm a teapot"
    gateway = Server(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with gateway.client(retries=3) as client, pytest.raises(ApiError) as raised:
        client.generate_id("CUS")
    assert (raised.value.status, raised.value.problem) == (502, {})
    assert len(gateway.requests) == 1  # only a 503 says "try again"


STATS = {
    "prefix": "CUS",
    "scope": "",
    "exists": True,
    "latest_id": "CUS-AAA0001",
    "next_id": "CUS-AAA0002",
    "count_issued": 1,
    "is_active": True,
    "format": {"separator": "-", "letter_width": 3, "digit_width": 4, "checksum": None},
    "template": None,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "created_by": None,
    "width_usage": 0.0,
    "warning": None,
}


def test_a_newer_servers_extra_fields_are_ignored() -> None:
    stats = {**STATS, "next_reset": "2027-01-01"}
    server = Server(httpx.Response(200, json=stats))
    with server.client() as client:
        parsed = client.get_prefix_stats("CUS")
    assert parsed.latest_id == "CUS-AAA0001" and parsed.format == IdFormat()
    assert parsed.created_at is not None and parsed.created_at.year == 2026


async def test_the_async_client_retries_as_the_sync_one() -> None:
    refused = httpx.ConnectError("refused")
    server = Server(refused, problem("sequence-busy"), allocated("CUS-AAA0001"))
    async with server.async_client(retries=2, backoff=0.01) as client:
        assert await client.generate_id("CUS") == "CUS-AAA0001"
    assert len(server.requests) == 3 and len(server.sleeps) == 2
    down = Server(problem("storage-unavailable"))
    async with down.async_client(retries=2, backoff=0.01) as client:
        with pytest.raises(StorageError):
            await client.generate_id("CUS")
    assert len(down.requests) == 3
    gone = Server(refused)
    async with gone.async_client(retries=1, backoff=0.01) as client:
        with pytest.raises(ServiceUnreachableError):
            await client.parse_id("../prefixes/MTX")
    assert gone.paths == ["/api/v1/ids/..%2Fprefixes%2FMTX"] * 2
    unhealthy = Server(httpx.Response(503, json={**HEALTHY, "status": "unhealthy"}))
    async with unhealthy.async_client(retries=2) as client:
        assert not (await client.health()).healthy
    assert len(unhealthy.requests) == 1


# -- reads after a timeout, and answers that are not JSON -------------------------------------

PARSED = {
    "prefix": "CUS",
    "letters": "AAB",
    "number": 12,
    "ordinal": 10011,
    "normalized": "CUS-AAB0012",
}
# Every read of the API, with an answer it accepts.
READS: list[tuple[str, Callable[[Any], Any], dict[str, Any]]] = [
    ("get_prefix_stats", lambda c: c.get_prefix_stats("CUS"), STATS),
    ("list_prefixes", lambda c: c.list_prefixes(), {"items": [STATS], "total": 1}),
    ("parse_id", lambda c: c.parse_id("CUS-AAB12"), PARSED),
    ("list_audit", lambda c: c.list_audit(), {"items": [], "next_cursor": None}),
]


def html(status: int = 200) -> httpx.Response:
    """A proxy's page where the service's JSON should be."""
    page = "<html><body>Sign in to the proxy</body></html>"
    return httpx.Response(status, text=page, headers={"content-type": "text/html"})


def timeout() -> httpx.ReadTimeout:
    return httpx.ReadTimeout("timed out reading the answer")


@pytest.mark.parametrize(
    ("call", "answer"), [(c, a) for _, c, a in READS], ids=[n for n, *_ in READS]
)
def test_a_read_timeout_on_a_read_is_retried_and_the_call_succeeds(
    call: Callable[[Any], Any], answer: dict[str, Any]
) -> None:
    server = Server(timeout(), timeout(), httpx.Response(200, json=answer))
    with server.client(retries=3, backoff=0.01) as client:
        call(client)
    assert [r.method for r in server.requests] == ["GET"] * 3 and len(server.sleeps) == 2
    assert all("idempotency-key" not in r.headers for r in server.requests)


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("read"), httpx.WriteTimeout("write"), httpx.PoolTimeout("pool")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("call", [c for _, c, _ in READS], ids=[n for n, *_ in READS])
def test_a_read_that_times_out_to_the_end_is_unreachable_not_a_raw_httpx_error(
    call: Callable[[Any], Any], failure: Exception
) -> None:
    server = Server(failure)
    with (
        server.client(retries=2, backoff=0.01) as client,
        pytest.raises(ServiceUnreachableError) as raised,
    ):
        call(client)
    assert isinstance(raised.value, StorageError)
    assert raised.value.__cause__ is failure
    assert len(server.requests) == 3 and len(server.sleeps) == 2


def test_a_health_check_that_times_out_is_unreachable_at_once() -> None:
    server = Server(timeout())
    with server.client(retries=3) as client, pytest.raises(ServiceUnreachableError):
        client.health()
    assert len(server.requests) == 1 and server.sleeps == []  # health() is not retried


def test_an_unkeyed_change_is_not_sent_again_after_a_read_timeout() -> None:
    """A POST without an Idempotency-Key may have been done: only a request that never
    arrived is sent again."""
    from idmanager.client import _Call

    unkeyed: _Call[Any] = _Call("POST", "/api/v1/prefixes/CUS/ids", lambda data: data)
    server = Server(timeout(), allocated("CUS-AAA0001"))
    with server.client(retries=3) as client, pytest.raises(httpx.ReadTimeout):
        client._send(unkeyed)
    assert len(server.requests) == 1 and server.sleeps == []
    refused = Server(httpx.ConnectError("refused"), allocated("CUS-AAA0001"))
    with refused.client(retries=3, backoff=0.01) as client:
        assert client._send(unkeyed)["ids"] == ["CUS-AAA0001"]
    assert len(refused.requests) == 2


async def test_the_async_client_retries_a_read_after_a_timeout() -> None:
    server = Server(timeout(), httpx.Response(200, json=STATS))
    async with server.async_client(retries=2, backoff=0.01) as client:
        assert (await client.get_prefix_stats("CUS")).latest_id == "CUS-AAA0001"
    assert len(server.requests) == 2 and len(server.sleeps) == 1
    gone = Server(timeout())
    async with gone.async_client(retries=2, backoff=0.01) as client:
        with pytest.raises(ServiceUnreachableError):
            await client.list_audit()
        with pytest.raises(ServiceUnreachableError):
            await client.health()
    assert len(gone.requests) == 3 + 1


@pytest.mark.parametrize(
    "call",
    [c for _, c, _ in READS] + [lambda c: c.generate_id("CUS"), lambda c: c.health()],
    ids=[n for n, *_ in READS] + ["generate_id", "health"],
)
def test_an_html_page_instead_of_json_is_an_api_error(call: Callable[[Any], Any]) -> None:
    server = Server(html())
    with server.client(retries=3) as client, pytest.raises(ApiError) as raised:
        call(client)
    assert raised.value.status == 200
    assert "HTTP 200" in str(raised.value) and "text/html" in str(raised.value)
    assert raised.value.__cause__ is not None
    assert len(server.requests) == 1  # an answer came: nothing to retry


def test_an_answer_that_is_not_the_one_expected_is_an_api_error() -> None:
    for answer in (
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, json=["CUS-AAA0001"]),
        httpx.Response(201),  # no body at all
    ):
        with Server(answer).client() as client, pytest.raises(ApiError) as raised:
            client.generate_id("CUS")
        assert raised.value.status == answer.status_code
        assert f"HTTP {answer.status_code}" in str(raised.value)
    wrong = Server(httpx.Response(200, json={"items": 3}))
    with wrong.client() as client, pytest.raises(ApiError, match="HTTP 200"):
        client.list_prefixes()


def test_a_proxys_unhealthy_page_on_health_is_a_storage_error() -> None:
    """/health answers 503 with a report; a 503 HTML page from a proxy is no report."""
    page = html(503)
    with Server(page).client() as client, pytest.raises(StorageError):
        client.health()


async def test_the_async_client_reads_an_html_page_as_an_api_error() -> None:
    server = Server(html(), html())
    async with server.async_client() as client:
        with pytest.raises(ApiError, match=r"HTTP 200.*text/html"):
            await client.get_prefix_stats("CUS")
        with pytest.raises(ApiError, match=r"HTTP 200.*text/html"):
            await client.bulk_generate_ids("CUS", 2)
    assert len(server.requests) == 2
