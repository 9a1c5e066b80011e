"""A Python client for the IdManager HTTP service, sync (``IdManagerClient``) and async.

    with IdManagerClient("http://127.0.0.1:8000", api_key="...") as client:
        client.generate_id("CUS")              # 'CUS-AAA0001'
        client.bulk_generate_ids("CUS", 100)   # ['CUS-AAA0002', ...]

Errors arrive as the library's own exceptions (``PrefixNotFoundError``, ``ResetRefusedError``,
``InvalidPrefixError``, ...). A 503 or a connection failure is retried with exponential backoff
a bounded number of times, then raised as ``StorageError``; a 4xx is never retried. An
allocation retried after a lost response may leave a gap in the sequence, never a duplicate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .application.service import ResetResult
from .domain.errors import (
    ConflictError,
    IdManagerError,
    InvalidInputError,
    StorageError,
)
from .domain.format import IdFormat, ParsedId, normalize_prefix
from .problems import DOMAIN_PROBLEMS, TYPE_PREFIX

__all__ = [
    "AccessDeniedError",
    "ApiError",
    "AsyncIdManagerClient",
    "HealthReport",
    "IdManagerClient",
    "PrefixStats",
    "ServiceUnreachableError",
]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
# Failures worth another try: the request never reached the server, or its answer was lost.
RETRY_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
# A problem's ``type`` names the library's exception (the server's own table).
_PROBLEM_TYPES: dict[str, type[IdManagerError]] = {
    kind: error for error, _, kind, _ in DOMAIN_PROBLEMS
}


class ApiError(IdManagerError):
    """A response the client cannot map to a domain error; ``status`` and ``problem`` tell."""

    def __init__(self, message: str, status: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}


class AccessDeniedError(ApiError, PermissionError):
    """The API key is missing or wrong (401), or its role is too low (403)."""


class ServiceUnreachableError(StorageError):
    """The service could not be reached, even after the retries."""


@dataclass(frozen=True, slots=True)
class PrefixStats:
    """The state and statistics of one sequence."""

    prefix: str
    scope: str
    exists: bool
    latest_id: str | None
    next_id: str
    count_issued: int
    is_active: bool
    format: IdFormat
    created_at: datetime | None
    updated_at: datetime | None
    width_usage: float
    warning: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrefixStats:
        """Build from the service's JSON."""
        return cls(
            prefix=data["prefix"],
            scope=data.get("scope", ""),
            exists=data.get("exists", True),
            latest_id=data.get("latest_id"),
            next_id=data["next_id"],
            count_issued=data["count_issued"],
            is_active=data.get("is_active", True),
            format=IdFormat(**data["format"]) if data.get("format") else IdFormat(),
            created_at=_time(data.get("created_at")),
            updated_at=_time(data.get("updated_at")),
            width_usage=data.get("width_usage", 0.0),
            warning=data.get("warning"),
        )


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The service's health check, in the seed's shape."""

    status: str
    message: str
    timestamp: str
    prefix_count: int | None = None
    test_id_generated: str | None = None
    error_type: str | None = None

    @property
    def healthy(self) -> bool:
        return self.status == "healthy"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


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
    kind = str(problem.get("type", "")).removeprefix(TYPE_PREFIX)
    if status in (401, 403):
        return AccessDeniedError(detail, status, problem)
    if kind in _PROBLEM_TYPES:
        return _PROBLEM_TYPES[kind](detail)
    if status in (400, 422):
        return InvalidInputError(detail)
    if status == 409:
        return ConflictError(detail)
    if status == 503:
        return StorageError(detail)
    return ApiError(f"HTTP {status}: {detail}", status, problem)


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

    def outcome(self, response: httpx.Response) -> T:
        problem = "problem" in response.headers.get("content-type", "")
        if response.status_code >= 400 and (problem or response.status_code not in self.answers):
            raise _error(response)
        return self.decode(response.json())


def _prefix_url(prefix: str) -> str:
    # Validated here: a prefix with a '/' or '?' would otherwise reach another route.
    return "/api/v1/prefixes/" + normalize_prefix(prefix)


def _allocate(prefix: str, count: int, scope: str) -> _Call[list[str]]:
    return _Call(
        "POST",
        _prefix_url(prefix) + "/ids",
        lambda data: list(data["ids"]),
        {"count": count, "scope": scope},
    )


def _stats(prefix: str, scope: str) -> _Call[PrefixStats]:
    return _Call("GET", _prefix_url(prefix), PrefixStats.from_json, {"scope": scope})


def _list(skip: int, limit: int, active_only: bool, scope: str | None) -> _Call[list[PrefixStats]]:
    params: dict[str, Any] = {"skip": skip, "limit": limit, "active_only": active_only}
    if scope is not None:
        params["scope"] = scope
    return _Call(
        "GET",
        "/api/v1/prefixes",
        lambda data: [PrefixStats.from_json(item) for item in data["items"]],
        params,
    )


def _configure(
    prefix: str,
    scope: str,
    fmt: IdFormat | None,
    is_active: bool | None,
    latest_id: str | None,
    force: bool,
) -> _Call[PrefixStats]:
    body: dict[str, Any] = {"force": force}
    if fmt is not None:
        body["format"] = {
            "separator": fmt.separator,
            "letter_width": fmt.letter_width,
            "digit_width": fmt.digit_width,
        }
    if is_active is not None:
        body["is_active"] = is_active
    if latest_id is not None:
        body["latest_id"] = latest_id
    return _Call("PUT", _prefix_url(prefix), PrefixStats.from_json, {"scope": scope}, body)


def _reset(
    prefix: str, reset_to: str | None, force: bool, scope: str, dry_run: bool
) -> _Call[ResetResult]:
    body = {"reset_to": reset_to, "force": force, "dry_run": dry_run}
    url = _prefix_url(prefix) + "/reset"
    return _Call("POST", url, lambda data: ResetResult(**data), {"scope": scope}, body)


def _parse(text: str, scope: str, prefix: str | None) -> _Call[ParsedId]:
    params: dict[str, Any] = {"scope": scope}
    if prefix is not None:
        params["prefix"] = prefix
    fields = ("prefix", "letters", "number", "ordinal", "normalized")
    return _Call(
        "GET",
        "/api/v1/ids/" + quote(text, safe="/"),
        lambda data: ParsedId(*(data[name] for name in fields)),
        params,
    )


def _health() -> _Call[HealthReport]:
    names = HealthReport.__dataclass_fields__
    return _Call(
        "GET",
        "/health",
        lambda data: HealthReport(**{k: v for k, v in data.items() if k in names}),
        retry=False,
        answers=frozenset({503}),
    )


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


def _unreachable(exc: httpx.HTTPError) -> ServiceUnreachableError:
    return ServiceUnreachableError(f"IdManager service unreachable: {exc}")


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
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, max_backoff=max_backoff, api_key=api_key)
        self.http = httpx.Client(
            base_url=base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> IdManagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _send(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.http.request(
                    call.method, call.url, params=call.params, json=call.body
                )
            except RETRY_ERRORS as exc:
                if last:
                    raise _unreachable(exc) from exc
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code == 503 and call.retry and not last:
                time.sleep(self._delay(attempt, response))
                continue
            return call.outcome(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def generate_id(self, prefix: str, *, scope: str = "") -> str:
        """Allocate the next ID of ``prefix``."""
        return self._send(_allocate(prefix, 1, scope))[0]

    def bulk_generate_ids(self, prefix: str, count: int, *, scope: str = "") -> list[str]:
        """Allocate ``count`` consecutive IDs of ``prefix``."""
        return self._send(_allocate(prefix, count, scope))

    def get_prefix_stats(self, prefix: str, *, scope: str = "") -> PrefixStats:
        """Return the statistics of ``prefix`` (``PrefixNotFoundError`` if unknown)."""
        return self._send(_stats(prefix, scope))

    def list_prefixes(
        self,
        *,
        skip: int = 0,
        limit: int = 100,
        active_only: bool = False,
        scope: str | None = None,
    ) -> list[PrefixStats]:
        """Return a page of sequences, ordered by scope and prefix."""
        return self._send(_list(skip, limit, active_only, scope))

    def configure_prefix(
        self,
        prefix: str,
        *,
        scope: str = "",
        fmt: IdFormat | None = None,
        is_active: bool | None = None,
        latest_id: str | None = None,
        force: bool = False,
    ) -> PrefixStats:
        """Register ``prefix`` or change its format, state or starting point (admin)."""
        return self._send(_configure(prefix, scope, fmt, is_active, latest_id, force))

    def reset_sequence(
        self,
        prefix: str,
        reset_to: str | None = None,
        force: bool = False,
        *,
        scope: str = "",
        dry_run: bool = False,
    ) -> ResetResult:
        """Make ``reset_to`` the latest ID; ``ResetRefusedError`` if backwards unforced."""
        return self._send(_reset(prefix, reset_to, force, scope, dry_run))

    def parse_id(self, text: str, *, scope: str = "", prefix: str | None = None) -> ParsedId:
        """Parse ``text`` on the server, in its prefix's stored format."""
        return self._send(_parse(text, scope, prefix))

    def health(self) -> HealthReport:
        """Return the service's health check (unhealthy is a report, not an exception)."""
        return self._send(_health())


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
    ) -> None:
        super().__init__(retries=retries, backoff=backoff, max_backoff=max_backoff, api_key=api_key)
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncIdManagerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempts = self._attempts(call)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self.http.request(
                    call.method, call.url, params=call.params, json=call.body
                )
            except RETRY_ERRORS as exc:
                if last:
                    raise _unreachable(exc) from exc
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code == 503 and call.retry and not last:
                await asyncio.sleep(self._delay(attempt, response))
                continue
            return call.outcome(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def generate_id(self, prefix: str, *, scope: str = "") -> str:
        """Allocate the next ID of ``prefix``."""
        return (await self._send(_allocate(prefix, 1, scope)))[0]

    async def bulk_generate_ids(self, prefix: str, count: int, *, scope: str = "") -> list[str]:
        """Allocate ``count`` consecutive IDs of ``prefix``."""
        return await self._send(_allocate(prefix, count, scope))

    async def get_prefix_stats(self, prefix: str, *, scope: str = "") -> PrefixStats:
        """Return the statistics of ``prefix`` (``PrefixNotFoundError`` if unknown)."""
        return await self._send(_stats(prefix, scope))

    async def list_prefixes(
        self,
        *,
        skip: int = 0,
        limit: int = 100,
        active_only: bool = False,
        scope: str | None = None,
    ) -> list[PrefixStats]:
        """Return a page of sequences, ordered by scope and prefix."""
        return await self._send(_list(skip, limit, active_only, scope))

    async def configure_prefix(
        self,
        prefix: str,
        *,
        scope: str = "",
        fmt: IdFormat | None = None,
        is_active: bool | None = None,
        latest_id: str | None = None,
        force: bool = False,
    ) -> PrefixStats:
        """Register ``prefix`` or change its format, state or starting point (admin)."""
        return await self._send(_configure(prefix, scope, fmt, is_active, latest_id, force))

    async def reset_sequence(
        self,
        prefix: str,
        reset_to: str | None = None,
        force: bool = False,
        *,
        scope: str = "",
        dry_run: bool = False,
    ) -> ResetResult:
        """Make ``reset_to`` the latest ID; ``ResetRefusedError`` if backwards unforced."""
        return await self._send(_reset(prefix, reset_to, force, scope, dry_run))

    async def parse_id(self, text: str, *, scope: str = "", prefix: str | None = None) -> ParsedId:
        """Parse ``text`` on the server, in its prefix's stored format."""
        return await self._send(_parse(text, scope, prefix))

    async def health(self) -> HealthReport:
        """Return the service's health check (unhealthy is a report, not an exception)."""
        return await self._send(_health())
