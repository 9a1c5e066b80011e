"""Shared fixtures: real databases, created fresh for each test session and migrated by Alembic.

PostgreSQL and MariaDB get a new database on the server (dropped at the end); SQLite a temp
file. A server that cannot be reached FAILS the tests that need it, with the reason: CI must
never go green without its databases. Override the servers with
``IDMANAGER_TEST_POSTGRES_URL`` and ``IDMANAGER_TEST_MARIADB_URL`` (URLs of an existing
database the fixtures may connect to and create databases from).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import idmanager

POSTGRES_ADMIN_URL = os.environ.get(
    "IDMANAGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MARIADB_ADMIN_URL = os.environ.get("IDMANAGER_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test")
BACKENDS = ("sqlite", "postgresql", "mariadb")


def unique_name(stem: str = "T") -> str:
    """Return ``stem`` followed by 10 random upper-case hex digits."""
    return stem + uuid.uuid4().hex[:10].upper()


class Databases:
    """Creates migrated databases on demand and drops them when the session ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._admin: dict[str, sa.Engine] = {}
        self._created: list[tuple[str, str]] = []
        self._unreachable: dict[str, str] = {}

    def _admin_engine(self, backend: str) -> sa.Engine:
        if backend in self._unreachable:
            pytest.fail(self._unreachable[backend], pytrace=False)
        if backend not in self._admin:
            url = POSTGRES_ADMIN_URL if backend == "postgresql" else MARIADB_ADMIN_URL
            engine = idmanager.create_engine(
                url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
            )
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
            except sa.exc.SQLAlchemyError as exc:
                engine.dispose()
                shown = make_url(url).render_as_string(hide_password=True)
                self._unreachable[backend] = (
                    f"{backend} is not reachable at {shown}: {exc.__class__.__name__}: "
                    f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}. "
                    "Start the server (see .ci/run) or point IDMANAGER_TEST_"
                    f"{'POSTGRES' if backend == 'postgresql' else 'MARIADB'}_URL at one."
                )
            if backend in self._unreachable:  # fail outside the except: one clear line
                pytest.fail(self._unreachable[backend], pytrace=False)
            self._admin[backend] = engine
        return self._admin[backend]

    def create(self, backend: str, *, migrate: bool = True) -> str:
        """Return the URL of a new, empty database of ``backend``, migrated unless asked not."""
        name = unique_name("idm_test_").lower()
        if backend == "sqlite":
            url = f"sqlite:///{self.tmp / (name + '.db')}"
        else:
            admin = self._admin_engine(backend)
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
            self._created.append((backend, name))
            server = POSTGRES_ADMIN_URL if backend == "postgresql" else MARIADB_ADMIN_URL
            url = make_url(server).set(database=name).render_as_string(hide_password=False)
        if migrate:
            idmanager.migrate(url)
        return url

    def drop_all(self) -> None:
        for backend, name in self._created:
            with self._admin[backend].connect() as connection:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        for engine in self._admin.values():
            engine.dispose()


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    """Create fresh databases on demand: ``databases.create("postgresql")``."""
    registry = Databases(tmp_path_factory.mktemp("databases"))
    yield registry
    registry.drop_all()


@pytest.fixture(scope="session")
def sqlite_url(databases: Databases) -> str:
    """A migrated SQLite database in a temp file, shared by the session."""
    return databases.create("sqlite")


@pytest.fixture(scope="session")
def postgres_url(databases: Databases) -> str:
    """A migrated PostgreSQL database created for this session (dropped at the end)."""
    return databases.create("postgresql")


@pytest.fixture(scope="session")
def mariadb_url(databases: Databases) -> str:
    """A migrated MariaDB database created for this session (dropped at the end)."""
    return databases.create("mariadb")


@pytest.fixture
def prefix() -> str:
    """A prefix no other test uses, such as ``T3F9A0C12B4``."""
    return unique_name()
