"""Fixtures of the contract suite: each test runs per backend × (async, sync) session mode."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from harness import Db

URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "postgres_url", "mariadb": "mariadb_url"}


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str:
    """The session's migrated database of ``backend``."""
    return str(request.getfixturevalue(URL_FIXTURES[backend]))


@pytest.fixture
async def db(backend: str, mode: str, url: str) -> AsyncIterator[Db]:
    harness = Db(backend, mode, url)
    yield harness
    await harness.dispose()


@pytest.fixture
async def fresh_db(backend: str, mode: str, databases: Any) -> AsyncIterator[Db]:
    """A harness on a brand-new migrated database, for examples that use literal prefixes."""
    harness = Db(backend, mode, databases.create(backend))
    yield harness
    await harness.dispose()


@pytest.fixture
def scope() -> str:
    """A scope (tenant) no other test uses."""
    return f"tenant-{uuid.uuid4().hex[:10]}"
