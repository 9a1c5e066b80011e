"""Fixtures of the in-process tier: the HTTP app over the in-memory fake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from api_keys import Keys

from .asgi import Api, build_app, running
from .fakes import AsyncFakeTransactions, FakeTransactions

# The bulk limit of the shared app: above the 10,000 IDs from which a response is streamed.
MAX_BULK = 50_000


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def shared_app(keys: Keys) -> tuple[FastAPI, AsyncFakeTransactions]:
    # Built once: building an app costs a tenth of a second of pydantic schema work. Each
    # health check probes the storage: a test's probe is not another's.
    return build_app(keys, max_bulk=MAX_BULK, health_cache_s=0)


@pytest.fixture
def app(shared_app: tuple[FastAPI, AsyncFakeTransactions]) -> FastAPI:
    """The shared app over storage of its own: empty, as for every test."""
    app, store = shared_app
    store.sync = FakeTransactions()
    return app


@pytest.fixture
async def api(
    app: FastAPI, shared_app: tuple[FastAPI, AsyncFakeTransactions], keys: Keys
) -> AsyncIterator[Api]:
    """The app over an empty fake, a key per role, and an ASGI client (``api.http``)."""
    async with running(app, shared_app[1], keys) as started:
        yield started
