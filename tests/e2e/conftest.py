"""End-to-end fixtures: real ``uvicorn`` server processes over real databases, driven by HTTP.

Each server is ``uvicorn idmanager.api.app:create_app --factory`` on a free port, configured
only through ``IDMANAGER_*`` environment variables, as an operator would run it. PostgreSQL
gets a fresh database (dropped at the end); if PostgreSQL cannot be reached the tests FAIL.
Override the server with ``IDMANAGER_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import idmanager
from api_keys import Keys

POSTGRES_ADMIN_URL = os.environ.get(
    "IDMANAGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")
# The main servers allow bulks above the streaming threshold (10,000).
MAX_BULK = 50_000
LOCK_TIMEOUT_MS = 1000


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_prefix(stem: str = "E") -> str:
    """Return a prefix no other test uses."""
    return stem + uuid.uuid4().hex[:10].upper()


class Server:
    """A uvicorn process serving the app; stopped at the end of its fixture."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str], port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")},
            **env,
        }
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True) -> Server:
        command = [sys.executable, "-m", "uvicorn", "idmanager.api.app:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info"]
        with self.log_path.open("ab") as log:
            # cwd is a temp dir: no stray .env file or ./idmanager.db is picked up.
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_live()
        return self

    def wait_live(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class PostgresDatabases:
    """Creates PostgreSQL databases for the session and drops them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self._admin: sa.Engine | None = None

    @property
    def admin(self) -> sa.Engine:
        if self._admin is None:
            engine = idmanager.create_engine(
                POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
            )
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except sa.exc.SQLAlchemyError as exc:
                shown = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
                pytest.fail(
                    f"PostgreSQL is not reachable at {shown} ({type(exc).__name__}); start it "
                    "or set IDMANAGER_TEST_POSTGRES_URL",
                    pytrace=False,
                )
            self._admin = engine
        return self._admin

    def create(self) -> str:
        name = "idm_e2e_" + uuid.uuid4().hex[:12]
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        self.created.append(name)
        url = make_url(POSTGRES_ADMIN_URL).set(database=name)
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self._admin is None:
            return
        with self._admin.connect() as connection:
            for name in self.created:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._admin.dispose()


class TcpProxy:
    """A TCP forwarder to the database that a test can cut and restore (an outage)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._listener is not None:
            # Shut down first: a bare close() leaves the thread blocked in accept() able to
            # take one more connection, and the "outage" would let it through.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    registry = PostgresDatabases()
    yield registry
    registry.drop_all()


@pytest.fixture(scope="session")
def database_urls(workdir: Path, pg_databases: PostgresDatabases) -> dict[str, str]:
    """One database per backend for the main servers (the server migrates it at start)."""
    return {
        "sqlite": f"sqlite+aiosqlite:///{workdir / 'main.db'}",
        "postgresql": pg_databases.create(),
    }


def server_env(database_url: str, keys: Keys | None, **extra: str) -> dict[str, str]:
    env = {
        "IDMANAGER_DATABASE_URL": database_url,
        "IDMANAGER_MAX_BULK": str(MAX_BULK),
        "IDMANAGER_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
        "IDMANAGER_POOL_SIZE": "5",
    }
    if keys is not None:
        env["IDMANAGER_API_KEYS"] = keys.env()
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def servers(
    workdir: Path, keys: Keys, database_urls: dict[str, str]
) -> Iterator[dict[str, Server]]:
    """The main servers, one per backend, with API keys; started together."""
    started = {
        backend: Server(workdir, backend, server_env(url, keys)).start(wait=False)
        for backend, url in database_urls.items()
    }
    try:
        for server in started.values():
            server.wait_live()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def server(servers: dict[str, Server], backend: str) -> Server:
    return servers[backend]


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
def new_prefix() -> Callable[[str], str]:
    """Return a factory of prefixes no other test uses."""
    return unique_prefix


@pytest.fixture
def start_server(workdir: Path) -> Iterator[Callable[..., Server]]:
    """Return a factory of extra servers, each stopped at the end of the test.

    ``start_server(name, database_url, keys=None, wait=True, **IDMANAGER_settings)``.
    """
    started: list[Server] = []

    def start(
        name: str, database_url: str, keys: Keys | None = None, wait: bool = True, **extra: str
    ) -> Server:
        env = server_env(
            database_url, keys, **{f"IDMANAGER_{k.upper()}": v for k, v in extra.items()}
        )
        server = Server(workdir, name, env)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Return a factory of TCP proxies (not yet listening), all stopped at the end."""
    proxies: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def max_bulk() -> int:
    return MAX_BULK
