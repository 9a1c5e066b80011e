"""The Python client over real HTTP to a real server, and riding out a server restart and a
database outage.

Every method's answers and errors, the retry policy (bounds, waits, Retry-After, never on
4xx) and URL encoding are the in-process tier's (``tests/unit/test_client.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import idmanager
from idmanager import IdFormat, PrefixNotFoundError, ResetRefusedError, SequenceStats
from idmanager.client import AsyncIdManagerClient, IdManagerClient
from idmanager.domain.errors import ForbiddenError

if TYPE_CHECKING:
    from conftest import Keys, PostgresDatabases, Server, TcpProxy


def test_the_sync_client_over_real_http(server: Server, keys: Keys, prefix: str) -> None:
    with IdManagerClient(server.url, api_key=keys.admin) as client:
        assert client.generate_id(prefix.lower()) == f"{prefix}-AAA0001"
        assert client.bulk_generate_ids(prefix, 2) == [f"{prefix}-AAA0002", f"{prefix}-AAA0003"]
        stats = client.get_prefix_stats(prefix)
        assert isinstance(stats, SequenceStats)
        assert (stats.latest_id, stats.count_issued, stats.format) == (
            f"{prefix}-AAA0003",
            3,
            IdFormat(),
        )
        assert stats.created_at is not None and stats.created_at.tzinfo is not None
        result = client.reset_sequence(prefix, f"{prefix}-AAA0100")
        assert result.next_id == f"{prefix}-AAA0101"
        with pytest.raises(ResetRefusedError):
            client.reset_sequence(prefix, None)
        page = client.list_audit(prefix=prefix)
        assert [r.action.value for r in page.items] == ["reset", "create"]
        assert client.health().healthy
    with IdManagerClient(server.url, api_key=keys.generate) as client:
        with pytest.raises(ForbiddenError):
            client.configure_prefix(prefix, is_active=False)
        with pytest.raises(PrefixNotFoundError):
            client.get_prefix_stats(prefix + "X")


async def test_the_async_client_over_real_http(server: Server, keys: Keys, prefix: str) -> None:
    async with AsyncIdManagerClient(server.url, api_key=keys.admin) as client:
        assert await client.bulk_generate_ids(prefix, 2, scope="t1") == [
            f"{prefix}-AAA0001",
            f"{prefix}-AAA0002",
        ]
        stats = await client.get_prefix_stats(prefix, scope="t1")
        assert (stats.scope, stats.count_issued) == ("t1", 2)
        assert [p.prefix for p in await client.list_prefixes(scope="t1", search=prefix)] == [prefix]
        assert (await client.health()).healthy


class Outage:
    """A client's sleep that ends an outage the first time the client waits, then waits.

    So the client is known to have met the outage, and nothing sleeps for a guessed time.
    """

    def __init__(self, end: Callable[[], None]) -> None:
        self.end = end
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) == 1:
            self.end()
        time.sleep(seconds)


def test_the_client_rides_out_a_server_restart(
    start_server: Callable[..., Server], workdir: Path, keys: Keys, prefix: str
) -> None:
    server = start_server("restart", f"sqlite+aiosqlite:///{workdir / 'restart.db'}", keys)
    with IdManagerClient(server.url, api_key=keys.admin) as client:
        assert client.generate_id(prefix) == f"{prefix}-AAA0001"
    server.stop()
    restart = Outage(lambda: server.start(wait=False))
    with IdManagerClient(
        server.url, api_key=keys.admin, retries=30, backoff=0.2, max_backoff=1.0, sleep=restart
    ) as client:
        # Refused connections while the process starts again, then the answer.
        assert client.generate_id(prefix) == f"{prefix}-AAA0002"
    assert restart.waits


def test_the_client_rides_out_a_database_outage(
    # The proxy first: the server stops before it, while its database still answers.
    tcp_proxy: Callable[[str, int], TcpProxy],
    start_server: Callable[..., Server],
    pg_databases: PostgresDatabases,
    keys: Keys,
    prefix: str,
) -> None:
    real = pg_databases.create()
    idmanager.migrate(real)
    target = httpx.URL(real.replace("postgresql://", "http://"))
    proxy = tcp_proxy(target.host, target.port or 5432)
    proxy.start()
    via_proxy = real.replace(f":{target.port}/", f":{proxy.port}/")
    # Every health check probes: the answers below tell the database's state at the time.
    server = start_server("outage", via_proxy, keys, migrate_on_start="false", health_cache_s="0")
    recovery = Outage(proxy.start)
    with IdManagerClient(
        server.url, api_key=keys.admin, retries=10, backoff=0.2, max_backoff=1.0, sleep=recovery
    ) as client:
        assert client.generate_id(prefix) == f"{prefix}-AAA0001"
        proxy.stop()  # the database goes away, open connections are cut
        assert httpx.get(server.url + "/health").status_code == 503
        # 503s while the database is away, then the answer: nothing lost, nothing twice.
        assert client.generate_id(prefix) == f"{prefix}-AAA0002"
        assert recovery.waits
        # The service resumed by itself: no restart, every request succeeds again.
        assert httpx.get(server.url + "/health").status_code == 200
        assert client.bulk_generate_ids(prefix, 2) == [f"{prefix}-AAA0003", f"{prefix}-AAA0004"]
