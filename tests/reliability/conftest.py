"""Fixtures of the reliability tests: each test names its backends with a ``backend`` parameter."""

from __future__ import annotations

import pytest

URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "postgres_url", "mariadb": "mariadb_url"}


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str:
    """The session's migrated database of ``backend``."""
    return str(request.getfixturevalue(URL_FIXTURES[backend]))
