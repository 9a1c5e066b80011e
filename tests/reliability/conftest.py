"""Fixtures of the reliability tests: each test names its backends with a ``backend`` parameter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .clusters import GaleraCluster, PgReplicatedPair

URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "postgres_url", "mariadb": "mariadb_url"}


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str:
    """The session's migrated database of ``backend``."""
    return str(request.getfixturevalue(URL_FIXTURES[backend]))


@pytest.fixture
def galera() -> Iterator[GaleraCluster]:
    """A throwaway 3-node MariaDB Galera cluster on loopback, Synced; killed and deleted after."""
    cluster = GaleraCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
    # Nothing left behind: no node running, no folder.
    assert not any(node.alive() for node in cluster.nodes) and not cluster.root.exists()


def _pg_pair(synchronous: bool) -> Iterator[PgReplicatedPair]:
    pair = PgReplicatedPair(synchronous=synchronous)
    try:
        pair.start()
        yield pair
    finally:
        pair.destroy()
    assert not pair.primary.root.exists() and not pair.standby.root.exists()


@pytest.fixture
def pg_sync_pair() -> Iterator[PgReplicatedPair]:
    """A throwaway PostgreSQL primary with a synchronous standby, streaming."""
    yield from _pg_pair(True)


@pytest.fixture
def pg_async_pair() -> Iterator[PgReplicatedPair]:
    """A throwaway PostgreSQL primary with an asynchronous standby, streaming."""
    yield from _pg_pair(False)
