"""A throwaway PostgreSQL cluster that a test may stop, crash and restart.

``initdb`` into a new temporary folder, ``pg_ctl start`` on a free port of 127.0.0.1 with the
socket in that folder, and ``rm -rf`` at the end: the shared server on 5432 is never touched.
PostgreSQL refuses to run as root, so when the tests run as root (as CI does) every
``initdb``/``pg_ctl`` runs as the ``postgres`` OS user, in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

import idmanager

SERVICE_USER = "postgres"


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pg_binary(name: str) -> str:
    """Return the path of a PostgreSQL server program (``initdb``, ``pg_ctl``)."""
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps them out of PATH, one folder per major version: take the newest.
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if not candidates:
        raise RuntimeError(f"{name} not found: install the PostgreSQL server binaries")
    return candidates[-1]


class PgCluster:
    """A PostgreSQL cluster of its own, in a temporary folder, on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="idm-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self._as_service_user = os.geteuid() == 0
        if self._as_service_user:
            account = pwd.getpwnam(SERVICE_USER)  # KeyError: no postgres user to run as
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _run(self, *command: str, timeout: float = 60) -> None:
        argv = list(command)
        if self._as_service_user:
            argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
        result = subprocess.run(
            argv, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n{self.log()[-3000:]}"
            )

    def init(self) -> PgCluster:
        """Create the cluster: user ``postgres``, trust authentication, no fsync."""
        self._run(
            pg_binary("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        # fsync only matters when the machine itself crashes; these tests crash processes.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\nfsync = off\nmax_connections = 100\n")
        return self

    def start(self) -> float:
        """Start the server and wait until it accepts connections; return how long it took."""
        began = time.monotonic()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            pg_binary("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return time.monotonic() - began

    def stop(self, mode: str = "fast") -> float:
        """Stop the server (``fast``: clean; ``immediate``: a crash); return how long it took."""
        began = time.monotonic()
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        return time.monotonic() - began

    def running(self) -> bool:
        """Return True while something accepts connections on the cluster's port."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """Return the SQLAlchemy URL of a database (a password is accepted and ignored)."""
        user = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        engine = idmanager.create_engine(
            self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def destroy(self) -> None:
        """Stop the server if it runs (as a crash: nothing needs saving) and delete it all."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
