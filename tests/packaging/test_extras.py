"""Each extra, installed alone from the wheel into a fresh virtual environment, does its job.

The core (the library, the CLI and SQLite) needs no database driver and no web framework;
``client`` needs httpx only; ``server`` serves; ``postgresql`` and ``mysql`` reach their
databases. What an extra does not install must not be needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = os.environ.get(
    "IDMANAGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MARIADB = os.environ.get("IDMANAGER_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the project's wheel once."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("idmanager-*.whl")
    return built


class Env:
    """A fresh virtual environment with the wheel and one extra installed."""

    def __init__(self, root: Path, wheel: Path, extra: str | None) -> None:
        self.root = root
        venv.create(root, with_pip=True)
        self.bin = root / "bin"
        target = f"{wheel}[{extra}]" if extra else str(wheel)
        self.run("pip", "install", "--quiet", "--disable-pip-version-check", target, timeout=600)

    def run(self, program: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={k: v for k, v in os.environ.items() if not k.startswith("IDMANAGER_")},
        )
        assert result.returncode == 0, f"{program} {args}: {result.stdout}{result.stderr}"
        return result.stdout

    def python(self, code: str) -> str:
        return self.run("python", "-c", code)

    def has(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([str(self.bin / "python"), "-c", code], check=False).returncode == 0


MakeEnv = Callable[[str | None], Env]


@pytest.fixture
def make_env(tmp_path: Path, wheel: Path) -> MakeEnv:
    def make(extra: str | None) -> Env:
        return Env(tmp_path / f"venv-{extra or 'core'}", wheel, extra)

    return make


def _database(admin_url: str) -> Iterator[str]:
    name = f"idm_pkg_{uuid.uuid4().hex[:10]}"
    from idmanager import create_engine

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


def test_the_core_numbers_on_sqlite_with_no_driver_and_no_web_framework(make_env: MakeEnv) -> None:
    env = make_env(None)
    url = f"sqlite:///{env.root / 'ids.db'}"
    env.run("idmanager", "migrate", "--database-url", url)
    assert env.run("idmanager", "next", "CUS", "-n", "2", "--database-url", url).split() == [
        "CUS-AAA0001",
        "CUS-AAA0002",
    ]
    assert (
        env.python(
            "import asyncio, idmanager\n"
            f"e = idmanager.create_async_engine({url!r})\n"
            "print(asyncio.run(idmanager.IdGeneratorUtil.generate_id('CUS', e)))"
        ).strip()
        == "CUS-AAA0003"
    )
    for absent in ("asyncpg", "psycopg", "pymysql", "aiomysql", "fastapi", "uvicorn", "httpx"):
        assert not env.has(absent), f"the core installs {absent}"


def test_the_client_extra_talks_http_and_loads_no_sqlalchemy(make_env: MakeEnv) -> None:
    env = make_env("client")
    loaded = env.python(
        "import sys, idmanager.client\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'alembic', 'aiosqlite', 'fastapi')))"
    )
    assert loaded.strip() == "[]"
    assert not env.has("fastapi") and env.has("httpx")
    # And it is a working client: a server nobody listens on is reported as unreachable.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = env.python(
        "from idmanager.client import IdManagerClient, ServiceUnreachableError\n"
        f"c = IdManagerClient('http://127.0.0.1:{port}', retries=0)\n"
        "try:\n    c.generate_id('CUS')\nexcept ServiceUnreachableError:\n    print('unreachable')"
    )
    assert out.strip() == "unreachable"


def test_the_server_extra_serves(make_env: MakeEnv) -> None:
    env = make_env("server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"sqlite:///{env.root / 'served.db'}"
    server = subprocess.Popen(
        [str(env.bin / "idmanager"), "serve", "--port", str(port), "--database-url", url],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    allocate = f"http://127.0.0.1:{port}/api/v1/prefixes/CUS/ids"
    try:
        answer = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not answer:
            time.sleep(0.3)
            answer = subprocess.run(
                [
                    str(env.bin / "python"),
                    "-c",
                    "import urllib.request as u, sys\n"
                    "try:\n"
                    f"    r = u.urlopen(u.Request({allocate!r}, method='POST'), timeout=2)\n"
                    "    print(r.read().decode())\n"
                    "except OSError:\n    pass",
                ],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        assert '"ids":["CUS-AAA0001"]' in answer, answer
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.parametrize(("extra", "admin_url"), [("postgresql", POSTGRES), ("mysql", MARIADB)])
def test_a_database_extra_reaches_its_database(
    make_env: MakeEnv, extra: str, admin_url: str
) -> None:
    env = make_env(extra)
    for url in _database(admin_url):
        env.run("idmanager", "migrate", "--database-url", url)
        out = env.run("idmanager", "next", "PKG", "--database-url", url)
        assert out.split() == ["PKG-AAA0001"]
        async_ok = env.python(
            "import asyncio, idmanager\n"
            f"e = idmanager.create_async_engine({url!r})\n"
            "async def go():\n"
            "    ids = await idmanager.IdGeneratorUtil.generate_id('PKG', e)\n"
            "    await e.dispose()\n"
            "    return ids\n"
            "print(asyncio.run(go()))"
        )
        assert async_ok.strip() == "PKG-AAA0002"
    assert not env.has("fastapi")
