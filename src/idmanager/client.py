"""A Python client for the IdManager HTTP service, sync (``IdManagerClient``) and async.

    with IdManagerClient("http://127.0.0.1:8000", api_key="...") as client:
        client.generate_id("CUS")              # 'CUS-AAA0001'
        client.bulk_generate_ids("CUS", 100)   # ['CUS-AAA0002', ...]

Errors arrive as the library's own exceptions (``PrefixNotFoundError``, ``ResetRefusedError``,
``InvalidPrefixError``, ...). A 503 or a connection failure is retried with exponential backoff
a bounded number of times, then raised as ``StorageError`` (or ``BusyError``); a 4xx is never
retried. Every change (allocation, reset, configuration) carries an ``Idempotency-Key`` that its
retries repeat: an answer lost on the way is given again, never done twice, so retried
allocations leave neither duplicates nor gaps. A read (GET) changes nothing, so it is retried
after a timeout as well. A body that is not the expected JSON (a proxy's HTML page) is an
``ApiError`` naming the status and content type. Needs only ``httpx``
(``pip install 'idmanager[client]'``): no database driver, no SQLAlchemy.

Each request is described once (``_generate_id``, ``_get_prefix_stats``, ...); the two
clients differ only in how they send it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar
from urllib.parse import quote

import httpx

from .application.results import (
    AuditPage,
    HealthReport,
    ResetResult,
    SequenceStats,
    from_json,
    to_json,
)
from .domain.errors import AccessDeniedError, IdManagerError, StorageError
from .domain.format import IdFormat, ParsedId
from .domain.repository import AuditAction
from .problems import error_for

__all__ = [
    "AccessDeniedError",
    "ApiError",
    "AsyncIdManagerClient",
    "HealthReport",
    "IdManagerClient",
    "SequenceStats",
    "ServiceUnreachableError",
]

T = TypeVar("T")
P = ParamSpec("P")
DEFAULT_URL = "http://127.0.0.1:8000"
# Failures worth another try: the request never reached the server, or its answer was lost.
RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
# A request that timed out may have been done: sent again only if that is safe, with its
# idempotency key or because it reads and changes nothing (a GET).
KEYED_RETRY_ERRORS = (*RETRY_ERRORS, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
IDEMPOTENCY_KEY = "Idempotency-Key"
# Methods that change nothing: sending one again is always safe.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(IdManagerError):
    """A response the client cannot map to a domain error; ``status`` and ``problem`` tell."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class ServiceUnreachableError(StorageError):
    """The service could not be reached, even after the retries."""


def _error(response: httpx.Response) -> IdManagerError:
    """Return the library's exception for an error response."""
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            problem = {}
    except ValueError:
        problem = {}
    status = response.status_code
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    found = error_for(str(problem.get("type", "")), status, detail)
    return found if found is not None else ApiError(f"HTTP {status}: {detail}", status, problem)


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One request of the API and how to read its answer."""

    method: str
    url: str
    decode: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    retry: bool = True
    # Statuses whose JSON body is an answer, not an error (the health check's 503).
    answers: frozenset[int] = frozenset()
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """Return the transport errors after which this request is sent again: any lost
        answer for a read or a keyed change, only a request that never arrived otherwise."""
        repeatable = self.method in SAFE_METHODS or IDEMPOTENCY_KEY in self.headers
        return KEYED_RETRY_ERRORS if repeatable else RETRY_ERRORS

    def outcome(self, response: httpx.Response) -> T:
        status = response.status_code
        problem = "problem" in response.headers.get("content-type", "")
        if status >= 400 and (problem or status not in self.answers):
            raise _error(response)
        try:
            data = response.json()
        except ValueError as exc:  # a proxy's HTML page, an empty body, broken JSON
            if status >= 400:
                raise _error(response) from exc
            raise _unreadable(response, "is not JSON") from exc
        try:
            return self.decode(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise _unreadable(response, "is not the answer expected") from exc


def _unreadable(response: httpx.Response, why: str) -> ApiError:
    """Return the error for a response whose body the client cannot read as its answer."""
    status = response.status_code
    content_type = response.headers.get("content-type") or "no content type"
    return ApiError(
        f"HTTP {status}: the response body ({content_type}) {why};"
        " is a proxy or another service answering at this URL?",
        status,
    )


def _segment(text: str) -> str:
    """Return ``text`` as one path segment: '/', '?', '#' and dot segments encoded."""
    encoded = quote(text, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def _prefix_url(prefix: str) -> str:
    return "/api/v1/prefixes/" + _segment(prefix)


def _date(on: object) -> dict[str, Any]:
    return {} if on is None else {"date": str(on)}


def _once(key: str | None) -> dict[str, str]:
    """Return the header that makes a change safe to send again: one key per call, reused
    by every retry of it, so a lost answer is given again instead of being done twice."""
    return {IDEMPOTENCY_KEY: key or uuid.uuid4().hex}


# -- the requests, each described once ---------------------------------------------------


def _generate_id(
    prefix: str, *, scope: str = "", on: object = None, idempotency_key: str | None = None
) -> _Call[str]:
    """Allocate the next ID of ``prefix`` (a template such as ``INV{YYYY}`` is resolved from
    ``on``, the document's date).

    Exactly once, across retries: the call sends an idempotency key (``idempotency_key``,
    or a new one) and every retry sends it again. Keep your own key to make it exactly once
    across restarts of your program too.
    """
    return _Call(
        "POST",
        _prefix_url(prefix) + "/ids",
        lambda data: str(data["ids"][0]),
        {"count": 1, "scope": scope, **_date(on)},
        headers=_once(idempotency_key),
    )


def _bulk_generate_ids(
    prefix: str,
    count: int,
    *,
    scope: str = "",
    on: object = None,
    idempotency_key: str | None = None,
) -> _Call[list[str]]:
    """Allocate ``count`` consecutive IDs of ``prefix``, exactly once across retries."""
    return _Call(
        "POST",
        _prefix_url(prefix) + "/ids",
        lambda data: list(data["ids"]),
        {"count": count, "scope": scope, **_date(on)},
        headers=_once(idempotency_key),
    )


def _get_prefix_stats(prefix: str, *, scope: str = "", on: object = None) -> _Call[SequenceStats]:
    """Return the statistics of ``prefix`` (``PrefixNotFoundError`` if unknown)."""
    return _Call(
        "GET",
        _prefix_url(prefix),
        lambda data: from_json(SequenceStats, data),
        {"scope": scope, **_date(on)},
    )


def _list_prefixes(
    *,
    skip: int = 0,
    limit: int = 100,
    active_only: bool = False,
    scope: str | None = None,
    search: str | None = None,
    template: str | None = None,
) -> _Call[list[SequenceStats]]:
    """Return a page of sequences, ordered by scope and prefix."""
    params: dict[str, Any] = {"skip": skip, "limit": limit, "active_only": active_only}
    optional = {"scope": scope, "search": search, "template": template}
    params.update({name: value for name, value in optional.items() if value is not None})
    return _Call(
        "GET",
        "/api/v1/prefixes",
        lambda data: [from_json(SequenceStats, item) for item in data["items"]],
        params,
    )


def _configure_prefix(
    prefix: str,
    *,
    scope: str = "",
    fmt: IdFormat | None = None,
    is_active: bool | None = None,
    latest_id: str | None = None,
    force: bool = False,
    idempotency_key: str | None = None,
) -> _Call[SequenceStats]:
    """Register ``prefix`` or change its format, state or starting point (admin), once."""
    body: dict[str, Any] = {"force": force}
    if fmt is not None:
        body["format"] = to_json(fmt)
    if is_active is not None:
        body["is_active"] = is_active
    if latest_id is not None:
        body["latest_id"] = latest_id
    return _Call(
        "PUT",
        _prefix_url(prefix),
        lambda data: from_json(SequenceStats, data),
        {"scope": scope},
        body,
        headers=_once(idempotency_key),
    )


def _reset_sequence(
    prefix: str,
    reset_to: str | None = None,
    force: bool = False,
    *,
    scope: str = "",
    dry_run: bool = False,
    idempotency_key: str | None = None,
) -> _Call[ResetResult]:
    """Make ``reset_to`` the latest ID; ``ResetRefusedError`` if backwards unforced (admin).

    Done once across retries (an idempotency key, as for allocations)."""
    body = {"reset_to": reset_to, "force": force, "dry_run": dry_run}
    return _Call(
        "POST",
        _prefix_url(prefix) + "/reset",
        lambda data: from_json(ResetResult, data),
        {"scope": scope},
        body,
        headers=_once(idempotency_key),
    )


def _parse_id(text: str, *, scope: str = "", prefix: str | None = None) -> _Call[ParsedId]:
    """Parse ``text`` on the server, in its prefix's stored format."""
    params: dict[str, Any] = {"scope": scope}
    if prefix is not None:
        params["prefix"] = prefix
    return _Call(
        "GET", "/api/v1/ids/" + _segment(text), lambda data: from_json(ParsedId, data), params
    )


def _list_audit(
    *,
    scope: str | None = None,
    prefix: str | None = None,
    actor: str | None = None,
    action: AuditAction | str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
) -> _Call[AuditPage]:
    """Return a page of the audit trail, newest first (pass ``next_cursor`` as ``before``)."""
    given = {
        "scope": scope,
        "prefix": prefix,
        "actor": actor,
        "action": str(action) if action is not None else None,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "before": before,
    }
    params = {name: value for name, value in given.items() if value is not None}
    params["limit"] = limit
    return _Call("GET", "/api/v1/audit", lambda data: from_json(AuditPage, data), params)


def _health() -> _Call[HealthReport]:
    """Return the service's health check (unhealthy is a report, not an exception)."""
    return _Call(
        "GET",
        "/health",
        lambda data: from_json(HealthReport, data),
        retry=False,
        answers=frozenset({503}),
    )


# -- the two ways of sending them ----------------------------------------------------------


class _Base:
    """What the sync and async clients share: connection options and the retry policy."""

    def __init__(
        self, *, retries: int, backoff: float, max_backoff: float, api_key: str | None
    ) -> None:
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _attempts(self, call: _Call[Any]) -> int:
        return self.retries + 1 if call.retry else 1

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Return how long to wait before retry ``attempt`` (0-based), with jitter."""
        delay: float = self.backoff * 2**attempt
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        delay = min(delay, self.max_backoff)
        return delay / 2 + random.uniform(0, delay / 2)

    def _next(self, call: _Call[Any], attempt: int, outcome: httpx.Response | Exception) -> float:
        """Return how long to wait before another try, or raise the outcome's error."""
        last = attempt == self._attempts(call) - 1
        if isinstance(outcome, Exception):
            if last:
                raise ServiceUnreachableError(
                    f"IdManager service unreachable: {outcome}"
                ) from outcome
            return self._delay(attempt, None)
        if outcome.status_code == 503 and call.retry and not last:
            return self._delay(attempt, outcome)
        return -1.0  # a final answer


def _sync(
    build: Callable[P, _Call[T]],
) -> Callable[Concatenate[IdManagerClient, P], T]:
    def method(self: IdManagerClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._send(build(*args, **kwargs))

    method.__name__ = build.__name__.lstrip("_")
    method.__doc__ = build.__doc__
    return method


def _async(
    build: Callable[P, _Call[T]],
) -> Callable[Concatenate[AsyncIdManagerClient, P], Awaitable[T]]:
    async def method(self: AsyncIdManagerClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._send(build(*args, **kwargs))

    method.__name__ = build.__name__.lstrip("_")
    method.__doc__ = build.__doc__
    return method


class IdManagerClient(_Base):
    """A synchronous client (``httpx.Client``). Use it as a context manager, or ``close()`` it."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, max_backoff=max_backoff, api_key=api_key)
        self.http = httpx.Client(
            base_url=base_url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._sleep = sleep

    def __enter__(self) -> IdManagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _send(self, call: _Call[T]) -> T:
        for attempt in range(self._attempts(call)):
            outcome: httpx.Response | Exception
            try:
                outcome = self.http.request(
                    call.method, call.url, params=call.params, json=call.body, headers=call.headers
                )
            except call.errors as exc:
                outcome = exc
            wait = self._next(call, attempt, outcome)
            if wait < 0:
                assert isinstance(outcome, httpx.Response)
                return call.outcome(outcome)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    generate_id = _sync(_generate_id)
    bulk_generate_ids = _sync(_bulk_generate_ids)
    get_prefix_stats = _sync(_get_prefix_stats)
    list_prefixes = _sync(_list_prefixes)
    configure_prefix = _sync(_configure_prefix)
    reset_sequence = _sync(_reset_sequence)
    parse_id = _sync(_parse_id)
    list_audit = _sync(_list_audit)
    health = _sync(_health)


class AsyncIdManagerClient(_Base):
    """An asynchronous client (``httpx.AsyncClient``): the same methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, max_backoff=max_backoff, api_key=api_key)
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._sleep = sleep

    async def __aenter__(self) -> AsyncIdManagerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        for attempt in range(self._attempts(call)):
            outcome: httpx.Response | Exception
            try:
                outcome = await self.http.request(
                    call.method, call.url, params=call.params, json=call.body, headers=call.headers
                )
            except call.errors as exc:
                outcome = exc
            wait = self._next(call, attempt, outcome)
            if wait < 0:
                assert isinstance(outcome, httpx.Response)
                return call.outcome(outcome)
            await self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    generate_id = _async(_generate_id)
    bulk_generate_ids = _async(_bulk_generate_ids)
    get_prefix_stats = _async(_get_prefix_stats)
    list_prefixes = _async(_list_prefixes)
    configure_prefix = _async(_configure_prefix)
    reset_sequence = _async(_reset_sequence)
    parse_id = _async(_parse_id)
    list_audit = _async(_list_audit)
    health = _async(_health)
