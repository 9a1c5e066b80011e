"""The HTTP service in-process: the FastAPI app over the in-memory fake, driven through ASGI.

No server, no database, no socket: ``serve()`` builds the app over :class:`AsyncFakeTransactions`
with a key per role, runs its lifespan, and hands back an ``httpx.AsyncClient`` speaking ASGI.
``call_asgi`` drives the app by hand when a test needs to see the messages themselves (a body
sent in pieces, a response streamed in pieces); ``SyncASGITransport`` lets the synchronous
client talk to the app too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from api_keys import Keys
from idmanager.api.app import create_app
from idmanager.application.use_cases import IdManagerUseCases
from idmanager.problems import PROBLEM_JSON, kind
from idmanager.settings import Settings

from .fakes import AsyncFakeTransactions, FakeRepository

BASE_URL = "http://localhost"


def settings(**changes: Any) -> Settings:
    """Return settings from ``changes`` and the defaults only: no environment, no ``.env``."""
    # Keyword arguments win over IDMANAGER_* variables, so naming every field shuts them out.
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
    }
    return Settings(_env_file=None, **{**defaults, **changes})


def build_app(
    keys: Keys | None, store: AsyncFakeTransactions | None = None, **changes: Any
) -> tuple[FastAPI, AsyncFakeTransactions]:
    """Return the app over ``store`` (a new fake by default), with ``keys`` (None: open)
    unless ``changes`` name the ``api_keys`` themselves."""
    store = store or AsyncFakeTransactions()
    # As an operator writes them: IDMANAGER_API_KEYS=key:role,...
    changes.setdefault("api_keys", keys.env() if keys else "")
    app = create_app(settings(**changes), use_cases=IdManagerUseCases(store))
    return app, store


@dataclass
class Api:
    """A running app, its fake storage, its keys, and a client speaking ASGI to it."""

    app: FastAPI
    store: AsyncFakeTransactions
    keys: Keys
    http: httpx.AsyncClient

    @property
    def repository(self) -> FakeRepository:
        return self.store.repository

    def headers(self, role: str | None) -> dict[str, str]:
        """Return the Authorization header of a role (None: none; 'wrong': an unknown key)."""
        return self.keys.header(role)

    async def allocate(self, prefix: str, count: int = 1, **params: Any) -> list[str]:
        """Allocate through the API as the generate role; return the IDs."""
        response = await self.http.post(
            f"/api/v1/prefixes/{prefix}/ids",
            params={"count": count, **params},
            headers=self.headers("generate"),
        )
        assert response.status_code == 201, response.text
        ids: list[str] = response.json()["ids"]
        return ids

    async def admin(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request as the admin role."""
        headers = {**self.headers("admin"), **(headers or {})}
        return await self.http.request(method, url, headers=headers, **kwargs)


@contextlib.asynccontextmanager
async def running(
    app: FastAPI,
    store: AsyncFakeTransactions,
    keys: Keys | None,
    *,
    raise_app_exceptions: bool = True,
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> AsyncIterator[Api]:
    """Run ``app`` (its lifespan) and yield it with a client speaking ASGI to it from
    ``client`` (an address and port; the machine itself by default)."""
    transport = httpx.ASGITransport(
        app=app, raise_app_exceptions=raise_app_exceptions, client=client
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http,
    ):
        yield Api(app, store, keys or Keys(), http)


@contextlib.asynccontextmanager
async def serve(
    keys: Keys | None = None,
    *,
    raise_app_exceptions: bool = True,
    client: tuple[str, int] = ("127.0.0.1", 50000),
    **changes: Any,
) -> AsyncIterator[Api]:
    """Run a new app over a new fake (``changes`` are settings) and yield it with a client.

    Without ``keys`` the service has none, and every request is allowed.
    """
    app, store = build_app(keys, **changes)
    async with running(
        app, store, keys, raise_app_exceptions=raise_app_exceptions, client=client
    ) as api:
        yield api


def assert_problem(response: httpx.Response, status: int, name: str | None = None) -> Any:
    """Check that ``response`` is the problem ``name`` of the registry; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys()
    assert body["status"] == status
    assert body["instance"] == response.request.url.raw_path.decode().split("?")[0]
    if name is not None:
        found = kind(name)
        assert (body["type"], body["title"]) == (found.type, found.title), body
    return body


# -- the ASGI messages themselves ------------------------------------------------------------


@dataclass
class Exchange:
    """What ``call_asgi`` saw: the response's messages, and how much of the body was read."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    reads: int = 0  # http.request messages the app asked for

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)

    def json(self) -> Any:
        return json.loads(self.body)


async def call_asgi(
    app: FastAPI,
    method: str,
    path: str,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    chunks: Iterable[bytes] = (),
) -> Exchange:
    """Send one request, its body in ``chunks`` (one ``http.request`` message each)."""
    pending = list(chunks)
    exchange = Exchange()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {"host": "localhost", **(headers or {})}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }

    async def receive() -> dict[str, Any]:
        if not pending and exchange.reads:
            # The client stays connected until the response is complete.
            await anyio.sleep_forever()
        exchange.reads += 1
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            exchange.bodies.append(message["body"])

    await app(scope, receive, send)
    return exchange


# -- the synchronous client --------------------------------------------------------------------


class SyncASGITransport(httpx.BaseTransport):
    """Carries a sync ``httpx.Client``'s requests to an ASGI app on an event loop in a thread."""

    def __init__(self, portal: BlockingPortal, app: FastAPI) -> None:
        self.portal = portal
        self.inner = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(
                response.status_code, headers=response.headers, stream=httpx.ByteStream(content)
            )

        return self.portal.call(send)


@contextlib.contextmanager
def sync_transport(app: FastAPI) -> Iterator[SyncASGITransport]:
    """Run ``app`` (its lifespan included) on a loop of its own; yield a sync transport to it."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        yield SyncASGITransport(portal, app)
