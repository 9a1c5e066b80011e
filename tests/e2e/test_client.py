"""The Python client against a real server: results, errors, and retries (503 and connection
failures only, bounded; never on 4xx)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import idmanager
from idmanager import (
    FormatLockedError,
    IdFormat,
    InvalidCountError,
    InvalidIdError,
    InvalidPrefixError,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    StorageError,
)
from idmanager.client import (
    AccessDeniedError,
    AsyncIdManagerClient,
    IdManagerClient,
    ServiceUnreachableError,
)

if TYPE_CHECKING:
    from conftest import Keys, PostgresDatabases, Server, TcpProxy


class CountingTransport(httpx.HTTPTransport):
    """Counts the requests the client really sends (retries included)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await super().handle_async_request(request)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sync_client_tour(server: Server, keys: Keys, prefix: str, max_bulk: int) -> None:
    with IdManagerClient(server.url, api_key=keys.admin) as client:
        assert client.generate_id(prefix.lower()) == f"{prefix}-AAA0001"
        assert client.bulk_generate_ids(prefix, 3) == [
            f"{prefix}-AAA0002",
            f"{prefix}-AAA0003",
            f"{prefix}-AAA0004",
        ]
        stats = client.get_prefix_stats(prefix)
        assert (stats.prefix, stats.latest_id, stats.next_id) == (
            prefix,
            f"{prefix}-AAA0004",
            f"{prefix}-AAA0005",
        )
        assert stats.count_issued == 4 and stats.is_active and stats.exists
        assert stats.format == IdFormat()
        assert stats.created_at is not None and stats.created_at.tzinfo is not None
        assert prefix in {p.prefix for p in client.list_prefixes(limit=1000)}

        result = client.reset_sequence(prefix, f"{prefix}-AAA0100")
        assert isinstance(result, idmanager.ResetResult)
        assert (result.previous_id, result.next_id) == (f"{prefix}-AAA0004", f"{prefix}-AAA0101")
        with pytest.raises(ResetRefusedError, match="backwards"):
            client.reset_sequence(prefix, None)
        dry = client.reset_sequence(prefix, None, force=True, dry_run=True)
        assert dry.dry_run and dry.next_id == f"{prefix}-AAA0001"
        with pytest.raises(InvalidIdError):
            client.reset_sequence(prefix, "garbage")

        parsed = client.parse_id("cus-aab12")
        assert parsed == idmanager.ParsedId("CUS", "AAB", 12, 10011, "CUS-AAB0012")

        assert client.health().healthy

        with pytest.raises(PrefixNotFoundError):
            client.get_prefix_stats(prefix + "X")
        with pytest.raises(InvalidCountError, match=f"{max_bulk:,}"):
            client.bulk_generate_ids(prefix, max_bulk + 1)
        with pytest.raises(InvalidPrefixError, match="uppercase letters"):
            client.generate_id("bad/prefix")
        with pytest.raises(FormatLockedError):
            client.configure_prefix(prefix, fmt=IdFormat(separator="."))
        off = client.configure_prefix(prefix, is_active=False)
        assert off.is_active is False
        with pytest.raises(PrefixInactiveError):
            client.generate_id(prefix)


def test_sync_client_roles(server: Server, keys: Keys, prefix: str) -> None:
    with IdManagerClient(server.url, api_key=keys.generate) as client:
        assert client.generate_id(prefix) == f"{prefix}-AAA0001"
        with pytest.raises(AccessDeniedError) as denied:
            client.reset_sequence(prefix, None, force=True)
        assert denied.value.status == 403
    with IdManagerClient(server.url, api_key="wrong") as client, pytest.raises(AccessDeniedError):
        client.get_prefix_stats(prefix)


async def test_async_client_tour(server: Server, keys: Keys, prefix: str) -> None:
    async with AsyncIdManagerClient(server.url, api_key=keys.admin) as client:
        assert await client.generate_id(prefix) == f"{prefix}-AAA0001"
        assert await client.bulk_generate_ids(prefix, 2, scope="t1") == [
            f"{prefix}-AAA0001",
            f"{prefix}-AAA0002",
        ]
        stats = await client.get_prefix_stats(prefix, scope="t1")
        assert stats.count_issued == 2 and stats.scope == "t1"
        assert [p.prefix for p in await client.list_prefixes(scope="t1", limit=1000)].count(
            prefix
        ) == 1
        configured = await client.configure_prefix(
            prefix + "F", fmt=IdFormat(separator="", letter_width=0, digit_width=5)
        )
        assert configured.next_id == f"{prefix}F00001"
        assert await client.generate_id(prefix + "F") == f"{prefix}F00001"
        parsed = await client.parse_id(f"{prefix}F7", prefix=prefix + "F")
        assert parsed.normalized == f"{prefix}F00007"
        reset = await client.reset_sequence(prefix, f"{prefix}-ZZZ9999")
        assert reset.next_id == f"{prefix}-AAAA0001"
        with pytest.raises(ResetRefusedError):
            await client.reset_sequence(prefix, None)
        with pytest.raises(PrefixNotFoundError):
            await client.get_prefix_stats(prefix + "NONE")
        assert (await client.health()).healthy


def test_no_retry_on_client_errors(server: Server, keys: Keys, prefix: str) -> None:
    transport = CountingTransport()
    with IdManagerClient(
        server.url, api_key=keys.admin, retries=5, backoff=0.01, transport=transport
    ) as client:
        client.reset_sequence(prefix, f"{prefix}-AAA0009")
        transport.calls = 0
        failing: list[Callable[[], Any]] = [
            lambda: client.reset_sequence(prefix, None),  # 409
            lambda: client.get_prefix_stats(prefix + "X"),  # 404
            lambda: client.bulk_generate_ids(prefix, 10**9),  # 422
            lambda: client.parse_id("nonsense"),  # 422
        ]
        for call in failing:
            with pytest.raises(idmanager.IdManagerError):
                call()
        assert transport.calls == len(failing)
    transport = CountingTransport()
    with (
        IdManagerClient(server.url, api_key="wrong", retries=5, transport=transport) as client,
        pytest.raises(AccessDeniedError),
    ):
        client.generate_id(prefix)
    assert transport.calls == 1


def test_503_is_retried_a_bounded_number_of_times(
    start_server: Callable[..., Server], keys: Keys
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    server = start_server("client-503", down, keys, migrate_on_start="false")
    transport = CountingTransport()
    started = time.monotonic()
    with (
        IdManagerClient(
            server.url,
            api_key=keys.admin,
            retries=3,
            backoff=0.01,
            max_backoff=0.05,
            transport=transport,
        ) as client,
        pytest.raises(StorageError) as raised,
    ):
        client.generate_id("DOWN")
    assert not isinstance(raised.value, ServiceUnreachableError)
    assert transport.calls == 4
    assert time.monotonic() - started < 5
    # Unhealthy is an answer, not an exception.
    with IdManagerClient(server.url) as client:
        report = client.health()
    assert not report.healthy and report.error_type


async def test_async_client_retries_503_bounded(
    start_server: Callable[..., Server], keys: Keys
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    server = start_server("client-503-async", down, keys, migrate_on_start="false")
    transport = AsyncCountingTransport()
    async with AsyncIdManagerClient(
        server.url,
        api_key=keys.admin,
        retries=2,
        backoff=0.01,
        max_backoff=0.05,
        transport=transport,
    ) as client:
        with pytest.raises(StorageError):
            await client.bulk_generate_ids("DOWN", 5)
        assert transport.calls == 3
        assert not (await client.health()).healthy


def test_connection_errors_are_retried_bounded() -> None:
    transport = CountingTransport()
    with (
        IdManagerClient(
            f"http://127.0.0.1:{closed_port()}", retries=2, backoff=0.01, transport=transport
        ) as client,
        pytest.raises(ServiceUnreachableError),
    ):
        client.generate_id("NOWHERE")
    assert transport.calls == 3


def test_retry_rides_out_a_server_restart(
    start_server: Callable[..., Server], workdir: Path, keys: Keys, prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{workdir / 'restart.db'}"
    server = start_server("restart", url, keys)
    with IdManagerClient(server.url, api_key=keys.admin) as client:
        assert client.generate_id(prefix) == f"{prefix}-AAA0001"
    server.stop()
    results: list[Any] = []

    def call() -> None:
        with IdManagerClient(
            server.url, api_key=keys.admin, retries=10, backoff=0.2, max_backoff=1.0
        ) as client:
            try:
                results.append(client.generate_id(prefix))
            except Exception as exc:  # surfaced by the assertion below
                results.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the client meets refused connections meanwhile
    server.start()
    caller.join(timeout=30)
    assert results == [f"{prefix}-AAA0002"]


def test_retry_rides_out_a_database_outage(
    start_server: Callable[..., Server],
    tcp_proxy: Callable[[str, int], TcpProxy],
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
    server = start_server("outage", via_proxy, keys, migrate_on_start="false")
    client = IdManagerClient(
        server.url, api_key=keys.admin, retries=10, backoff=0.2, max_backoff=1.0
    )
    try:
        assert client.generate_id(prefix) == f"{prefix}-AAA0001"
        proxy.stop()  # the database goes away, open connections are cut
        assert httpx.get(server.url + "/health").status_code == 503
        results: list[Any] = []
        caller = threading.Thread(target=lambda: results.append(client.generate_id(prefix)))
        caller.start()
        time.sleep(1.5)  # the client meets 503s meanwhile
        proxy.start()
        caller.join(timeout=30)
        assert results == [f"{prefix}-AAA0002"]
        # The service resumed by itself: no restart, every request succeeds again.
        assert httpx.get(server.url + "/health").status_code == 200
        assert client.bulk_generate_ids(prefix, 2) == [f"{prefix}-AAA0003", f"{prefix}-AAA0004"]
    finally:
        client.close()
