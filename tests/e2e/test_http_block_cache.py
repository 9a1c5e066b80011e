"""The block cache in the HTTP service (``IDMANAGER_BLOCK_CACHE=true``), as an operator runs it.

Real ``uvicorn`` processes, one worker and two (``idmanager serve --workers 2``), over real
databases: no ID twice across workers, the unused tail handed back on SIGTERM, gaps but no
duplicates after SIGKILL, and the metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import sqlalchemy as sa

import idmanager

CACHE = {
    "block_cache": "true",
    "block_cache_initial_block": "50",
    "block_cache_min_block": "10",
    "block_cache_max_block": "400",
}
CLOSED = re.compile(
    r"block cache closed: (\d+) blocks fetched, (\d+) IDs handed back, (\d+) IDs lost"
)


class Server(Protocol):
    url: str
    process: subprocess.Popen[bytes] | None

    def log(self) -> str: ...


class Workers:
    """``python -m idmanager serve --workers N``: migrates once, then uvicorn's supervisor."""

    def __init__(self, workdir: Path, url: str, workers: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"workers-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")}
        env |= {f"IDMANAGER_{k.upper()}": v for k, v in CACHE.items()}
        env |= {"IDMANAGER_DATABASE_URL": url, "IDMANAGER_POOL_SIZE": "5"}
        command = [sys.executable, "-m", "idmanager", "serve", "--port", str(port)]
        with self.log_path.open("ab") as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [*command, "--workers", str(workers)],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A group of its own: uvicorn's workers outlive a killed supervisor.
                start_new_session=True,
            )
        try:
            self._wait_live()
        except BaseException:
            self.kill()
            raise

    def _wait_live(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"idmanager serve did not answer within 30 s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers (its process group), and wait for it."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, workdir: Path, pg_databases: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{workdir / ('bc_' + uuid.uuid4().hex[:12] + '.db')}"
    url: str = pg_databases.create()
    return url


@pytest.fixture
def pg_url(pg_databases: Any) -> str:
    url: str = pg_databases.create()
    return url


@pytest.fixture
def serve(start_server: Callable[..., Server], workdir: Path) -> Iterator[Callable[..., Server]]:
    """Return a factory of servers (``workers`` > 1: ``idmanager serve``), stopped at the end."""
    started: list[Workers] = []

    def start(name: str, url: str, *, workers: int = 1, cache: bool = True) -> Server:
        if workers == 1:
            return start_server(name, url, **(CACHE if cache else {}))
        started.append(Workers(workdir, url, workers))
        return started[-1]

    yield start
    for server in started:
        server.kill()


def allocate(server: Server, prefix: str, count: int = 1) -> list[str]:
    response = httpx.post(f"{server.url}/api/v1/prefixes/{prefix}/ids?count={count}", timeout=30)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["prefix"] == prefix.strip().upper() and body["count"] == count
    ids: list[str] = body["ids"]
    assert len(ids) == count
    return ids


def ordinal(id_: str) -> int:
    return idmanager.parse_id(id_).ordinal


def last_value(url: str, prefix: str) -> int:
    engine = idmanager.create_engine(url.replace("+aiosqlite", ""), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        value = connection.execute(
            sa.text("SELECT last_value FROM id_managers WHERE scope = '' AND prefix = :p"),
            {"p": prefix},
        ).scalar_one()
    engine.dispose()
    return int(value)


def stop(server: Server) -> list[tuple[int, int, int]]:
    """SIGTERM the server, wait for it, and return each worker's closing statistics."""
    assert server.process is not None
    server.process.terminate()
    # uvicorn shuts down cleanly, then re-raises the signal: -15 (or 0 from a supervisor).
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM), server.log()
    server.process = None
    return [tuple(map(int, m)) for m in CLOSED.findall(server.log())]


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_one_worker_serves_from_blocks_and_hands_back_the_tail_on_sigterm(
    serve: Callable[..., Server], database_url: str, new_prefix: Callable[[str], str]
) -> None:
    prefix = new_prefix("BC")
    server = serve("cache-1", database_url)
    big = allocate(server, prefix, 150)  # above block_cache_max_count: one statement
    assert [ordinal(i) for i in big] == list(range(1, 151))
    issued = [i for _ in range(120) for i in allocate(server, prefix)]
    issued += allocate(server, prefix.lower(), 7)  # a small bulk: served from the cache too
    # One process, no other client: the blocks follow each other, no gap.
    assert [ordinal(i) for i in issued] == list(range(151, 278))
    assert metric(server, "idmanager_block_cache_blocks_fetched_total") >= 2
    assert metric(server, "idmanager_block_cache_ids_reserved") > 0
    assert last_value(database_url, prefix) > 277  # reserved ahead

    [(blocks, handed_back, lost)] = stop(server)
    assert blocks >= 2 and handed_back > 0 and lost == 0
    # The unused tail went back: a server without the cache continues without a gap.
    assert last_value(database_url, prefix) == 277
    plain = serve("plain-1", database_url, cache=False)
    assert ordinal(allocate(plain, prefix)[0]) == 278


def test_two_workers_never_give_an_id_twice(
    serve: Callable[..., Server], pg_url: str, new_prefix: Callable[[str], str]
) -> None:
    prefixes = [new_prefix("BW") for _ in range(2)]
    server = serve("cache-2w", pg_url, workers=2)

    def client(n: int) -> list[str]:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            out = []
            for i in range(60):
                response = http.post(f"/api/v1/prefixes/{prefixes[(n + i) % 2]}/ids?count=2")
                assert response.status_code == 201, response.text
                out += response.json()["ids"]
            return out

    with ThreadPoolExecutor(8) as pool:
        issued = [i for ids in pool.map(client, range(8)) for i in ids]
    assert len(issued) == len(set(issued)) == 8 * 60 * 2

    closed = stop(server)
    assert len(closed) == 2, server.log()  # both workers closed their caches
    # Each ID the caches reserved was issued, handed back, or lost (a gap): nothing else.
    lost = sum(c[2] for c in closed)
    assert sum(last_value(pg_url, p) for p in prefixes) == len(issued) + lost
    for p in prefixes:
        mine = [ordinal(i) for i in issued if i.startswith(p + "-")]
        assert max(mine) <= last_value(pg_url, p)
    plain = serve("plain-2w", pg_url, cache=False)
    for p in prefixes:
        latest = last_value(pg_url, p)
        [next_id] = allocate(plain, p)
        assert ordinal(next_id) == latest + 1 and next_id not in issued


def test_a_crash_leaves_gaps_never_duplicates(
    serve: Callable[..., Server], pg_url: str, new_prefix: Callable[[str], str]
) -> None:
    prefix = new_prefix("BK")
    first = serve("crash", pg_url)
    before = [i for _ in range(30) for i in allocate(first, prefix)]
    assert first.process is not None
    first.process.kill()
    first.process.wait()
    first.process = None
    assert last_value(pg_url, prefix) > len(before)  # the rest of the blocks is lost: a gap
    second = serve("restarted", pg_url)
    after = [i for _ in range(30) for i in allocate(second, prefix)]
    assert ordinal(after[0]) > ordinal(before[-1]) + 1
    assert not set(before) & set(after)
