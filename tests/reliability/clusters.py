"""Throwaway replicated clusters: a MariaDB Galera cluster, and a PostgreSQL primary with a standby.

Both live in new temporary folders, listen on free ports of 127.0.0.1 only, and are stopped by
the process ids this module started, never by name: the shared servers on 3306 and 5432 run
beside them and are never touched. Like :mod:`throwaway`, servers that refuse to run as root
run as their service user (``mysql``, ``postgres``) in folders that user owns.

Everything is tuned to start fast on two busy cores and to lose nothing but durability against
a machine crash, which these tests never cause: they kill processes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import sqlalchemy as sa

import idmanager

from .throwaway import PgCluster, free_port, pg_binary

MARIADB_SERVICE_USER = "mysql"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
SYNCED = "Synced"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; return the seconds it took, or fail naming ``what``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


def _quiet_engine(url: str) -> sa.Engine:
    """An autocommit engine without a pool: probes must not keep connections to a dying node."""
    return idmanager.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 2},
    )


def scalar_or_none(url: str, sql: str) -> object | None:
    """Run one query and return its first value; None when the server cannot answer now."""
    engine = _quiet_engine(url)
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql(sql).scalar()
    except sa.exc.DBAPIError:
        return None
    finally:
        engine.dispose()


def execute_sql(url: str, *statements: str) -> None:
    """Run statements, each committed at once, on a connection of their own."""
    engine = _quiet_engine(url)
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


# --- MariaDB Galera ----------------------------------------------------------------------------


def mariadb_binary(name: str) -> str:
    """Return the path of a MariaDB program (``mariadbd`` lives in /usr/sbin, out of PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{name} not found: install mariadb-server")
    return found


def _galera_options(node: GaleraNode, suspect_timeout_s: float) -> str:
    # gmcast/ist ports are per node since three nodes share one address. A killed node is
    # declared dead after suspect_timeout (default 5 s): shorter here so a test of a kill
    # does not wait for nothing, long enough for two busy cores not to suspect a live node.
    # pc.recovery off: a restarted node joins the running cluster, never restores an old view.
    keepalive = max(0.2, suspect_timeout_s / 4)
    return ";".join(
        [
            f"gmcast.listen_addr=tcp://127.0.0.1:{node.wsrep_port}",
            f"ist.recv_addr=127.0.0.1:{node.ist_port}",
            "gcache.size=32M",
            "pc.recovery=FALSE",
            f"evs.keepalive_period=PT{keepalive:g}S",
            f"evs.inactive_check_period=PT{keepalive:g}S",
            f"evs.suspect_timeout=PT{suspect_timeout_s:g}S",
            f"evs.inactive_timeout=PT{suspect_timeout_s * 2:g}S",
            f"evs.install_timeout=PT{suspect_timeout_s * 2:g}S",
        ]
    )


@dataclass
class GaleraNode:
    """One ``mariadbd`` of a Galera cluster: its folder, its four ports, its process."""

    index: int
    folder: Path
    port: int = field(default_factory=free_port)
    wsrep_port: int = field(default_factory=free_port)
    ist_port: int = field(default_factory=free_port)
    sst_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def config(self) -> Path:
        return self.folder / "my.cnf"

    @property
    def log_path(self) -> Path:
        return self.folder / "mariadbd.log"

    def url(self, database: str = "mysql") -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class GaleraCluster:
    """A MariaDB Galera cluster of ``nodes`` processes on loopback, in a temporary folder.

    Node 0 bootstraps the cluster (``--wsrep-new-cluster``); the others join it one at a time
    (rsync is the state transfer method). Nodes are indexed from 0. Each node runs in a
    process group of its own, so killing a node also kills a state transfer it was running
    (no orphaned rsync daemons).
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        suspect_timeout_s: float = 2.0,
        options: dict[str, str] | None = None,
    ) -> None:
        if not Path(GALERA_PROVIDER).exists():
            raise RuntimeError(f"{GALERA_PROVIDER} not found: apt-get install galera-4 rsync")
        self.root = Path(tempfile.mkdtemp(prefix="idm-galera-"))
        self.name = self.root.name
        self.suspect_timeout_s = suspect_timeout_s
        self.options = options or {}
        self.nodes = [GaleraNode(i, self.root / f"node{i}") for i in range(nodes)]
        # Seconds each step took ("start", "restart node1" …): the tests record them.
        self.timings: dict[str, float] = {}
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = MARIADB_SERVICE_USER
            account = pwd.getpwnam(MARIADB_SERVICE_USER)  # KeyError: no mysql user to run as
            os.chown(self.root, account.pw_uid, account.pw_gid)

    # -- set-up ---------------------------------------------------------------------------------

    def _write_config(self, node: GaleraNode) -> None:
        address = ",".join(f"127.0.0.1:{n.wsrep_port}" for n in self.nodes)
        settings = {
            "datadir": str(node.data),
            "socket": str(node.folder / "mariadbd.sock"),
            "pid-file": str(node.folder / "mariadbd.pid"),
            "log-error": str(node.log_path),
            "port": str(node.port),
            "bind-address": "127.0.0.1",
            "skip-name-resolve": "ON",
            "character-set-server": "utf8mb4",
            # Small and not durable across a machine crash: fast to start, to copy, to write.
            "innodb_buffer_pool_size": "32M",
            "innodb_log_file_size": "8M",
            "innodb_flush_log_at_trx_commit": "0",
            "innodb_doublewrite": "0",
            "sync_binlog": "0",
            "performance_schema": "OFF",
            "skip-innodb-adaptive-hash-index": "ON",
            "max_connections": "200",
            # What Galera requires.
            "binlog_format": "ROW",
            "default_storage_engine": "InnoDB",
            "innodb_autoinc_lock_mode": "2",
            "wsrep_on": "ON",
            "wsrep_provider": GALERA_PROVIDER,
            "wsrep_cluster_name": self.name,
            "wsrep_cluster_address": f"gcomm://{address}",
            "wsrep_node_name": f"node{node.index}",
            "wsrep_node_address": f"127.0.0.1:{node.wsrep_port}",
            "wsrep_node_incoming_address": f"127.0.0.1:{node.port}",
            "wsrep_sst_method": "rsync",
            "wsrep_sst_receive_address": f"127.0.0.1:{node.sst_port}",
            "wsrep_provider_options": _galera_options(node, self.suspect_timeout_s),
            **self.options,
        }
        lines = ["[mysqld]", *(f"{key} = {value}" for key, value in settings.items())]
        node.config.write_text("\n".join(lines) + "\n")

    def _prepare(self, node: GaleraNode) -> None:
        node.folder.mkdir()
        self._write_config(node)
        if self._user:
            shutil.chown(node.folder, self._user, self._user)

    def _install(self, node: GaleraNode) -> None:
        self._prepare(node)
        # root@127.0.0.1 without a password, as on the shared test server.
        command = [
            mariadb_binary("mariadb-install-db"),
            f"--defaults-file={node.config}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *([f"--user={self._user}"] if self._user else []),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}{result.stderr}")

    def _spawn(self, node: GaleraNode, *, bootstrap: bool, position: str | None = None) -> None:
        argv = [*self._guard(), mariadb_binary("mariadbd"), f"--defaults-file={node.config}"]
        if bootstrap:
            argv.append("--wsrep-new-cluster")
        if position:
            argv.append(f"--wsrep-start-position={position}")
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _guard(self) -> list[str]:
        """Return the ``setpriv`` prefix that kills a node when the process that started it dies.

        A test run killed from outside (a CI timeout) runs no finalizer: without this, its
        nodes would go on running, orphaned. mariadbd must not switch user itself, since that
        clears the parent-death signal: setpriv switches first, then sets it, then execs (the
        node keeps the process id we know).
        """
        guard = [shutil.which("setpriv") or "setpriv", "--pdeathsig=KILL"]
        if self._user:
            guard[1:1] = [f"--reuid={self._user}", f"--regid={self._user}", "--init-groups"]
        return guard

    # -- state ----------------------------------------------------------------------------------

    def state(self, index: int) -> str | None:
        """Return the node's ``wsrep_local_state_comment`` (``Synced`` …); None if it is down."""
        node = self.nodes[index]
        if not node.alive():
            return None
        value = scalar_or_none(
            node.url(),
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
            "WHERE VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT'",
        )
        return None if value is None else str(value)

    def cluster_size(self, index: int) -> int:
        """Return the number of nodes in the primary component, as node ``index`` sees it."""
        value = scalar_or_none(
            self.nodes[index].url(),
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
            "WHERE VARIABLE_NAME = 'WSREP_CLUSTER_SIZE'",
        )
        return int(str(value)) if value is not None else 0

    def wait_synced(self, index: int, timeout: float = 60) -> float:
        """Wait until the node is Synced; fail at once, with its log, if its process ends."""
        node = self.nodes[index]

        def synced() -> bool:
            if not node.alive():
                raise RuntimeError(f"node{index} exited:\n{node.log()[-4000:]}")
            return self.state(index) == SYNCED

        try:
            return wait_for(synced, timeout, f"node{index} Synced")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{node.log()[-4000:]}") from None

    def wait_evicted(self, index: int, timeout: float = 60) -> float:
        """Wait until every running node counts only the running nodes (``index`` is gone)."""
        running = [node.index for node in self.nodes if node.alive() and node.index != index]
        return wait_for(
            lambda: all(self.cluster_size(i) == len(running) for i in running),
            timeout,
            f"node{index} evicted from the cluster",
        )

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> float:
        """Install and start every node; return the seconds until all are Synced.

        The joiners start from a copy of the bootstrap node's data, taken after a clean
        stop: they then share its history and catch up by an incremental transfer (IST)
        instead of copying everything over rsync, a few seconds less per node.
        """
        began = time.monotonic()
        first = self.nodes[0]
        self._install(first)
        self._spawn(first, bootstrap=True)
        self.wait_synced(0, timeout)
        self._stop_cleanly(first)
        for node in self.nodes[1:]:
            self._prepare(node)
            subprocess.run(["cp", "-a", str(first.data), str(node.data)], check=True)
        self._spawn(first, bootstrap=True)
        self.wait_synced(0, timeout)
        # One joiner at a time: two at once churn the membership for seconds ("no nodes
        # coming from primary view") before either is let in.
        for node in self.nodes[1:]:
            self._spawn(node, bootstrap=False)
            self.wait_synced(node.index, timeout)
        self.timings["start"] = time.monotonic() - began
        return self.timings["start"]

    def _stop_cleanly(self, node: GaleraNode, timeout: float = 60) -> None:
        """SIGTERM and wait: the node saves its position, so a copy of it can rejoin by IST."""
        assert node.process is not None
        node.process.terminate()
        node.process.wait(timeout=timeout)

    def _recover_position(self, node: GaleraNode) -> str | None:
        """Return the ``uuid:seqno`` the node's InnoDB holds after a crash, as galera_recovery.

        A node killed with SIGKILL has no saved position (seqno -1) and would need a full
        state transfer (SST), which blocks its donor; with the position recovered it only
        needs the writesets it missed (IST), as systemd's galera_recovery arranges.
        """
        log = node.folder / "recover.log"
        log.unlink(missing_ok=True)
        subprocess.run(
            [
                *self._guard(),
                mariadb_binary("mariadbd"),
                f"--defaults-file={node.config}",
                "--wsrep-recover",
                f"--log-error={log}",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.findall(r"WSREP: Recovered position: (\S+:-?\d+)", text)
        return found[-1] if found and not found[-1].endswith(":-1") else None

    def kill(self, index: int) -> None:
        """SIGKILL the node (and any state transfer it runs): a crash, not a shutdown."""
        node = self.nodes[index]
        if node.process is not None and node.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=30)

    def restart(
        self, index: int, *, wait: bool = True, recover: bool = True, timeout: float = 90
    ) -> float:
        """Start a stopped node again, joining the cluster; return the seconds until Synced.

        ``recover`` first recovers its position from InnoDB so it rejoins by IST; without it,
        a killed node rejoins by a full rsync SST, during which its donor blocks writes.
        """
        began = time.monotonic()
        node = self.nodes[index]
        if node.alive():
            raise RuntimeError(f"node{index} is running")
        # A node back before the others have evicted its dead incarnation can wedge the
        # membership protocol (seen here: the new node never reached a primary view).
        self.wait_evicted(index, timeout)
        position = self._recover_position(node) if recover else None
        self._spawn(node, bootstrap=False, position=position)
        if wait:
            self.wait_synced(index, timeout)
        self.timings[f"restart node{index}"] = time.monotonic() - began
        return self.timings[f"restart node{index}"]

    def url(self, index: int, database: str = "mysql") -> str:
        """Return the SQLAlchemy URL of a database on node ``index``."""
        return self.nodes[index].url(database)

    def urls(self, database: str = "mysql") -> list[str]:
        return [node.url(database) for node in self.nodes]

    def create_database(self, name: str) -> list[str]:
        """Create an empty database (replicated to every node); return its URL on each node."""
        execute_sql(self.url(0), f"CREATE DATABASE {name}")
        return self.urls(name)

    def set_global(self, name: str, value: str | int) -> None:
        """Set a global variable on every running node (``wsrep_retry_autocommit`` …)."""
        for node in self.nodes:
            if node.alive():
                execute_sql(node.url(), f"SET GLOBAL {name} = {value}")

    def isolate(self, index: int, isolated: bool = True) -> None:
        """Cut the node off the others (``gmcast.isolate``), or let it back, as a partition.

        Cut off, it falls out of the primary component and refuses queries (1047) until let
        back, when it rejoins by IST. Sent over a bare PyMySQL connection: SQLAlchemy's first
        queries on a new connection are SELECTs, which a non-primary node refuses.
        """
        node = self.nodes[index]
        connection = pymysql.connect(
            host="127.0.0.1", port=node.port, user="root", connect_timeout=5, autocommit=True
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SET GLOBAL wsrep_provider_options = %s", (f"gmcast.isolate={int(isolated)}",)
                )
        finally:
            connection.close()

    def destroy(self) -> float:
        """Kill every node (nothing needs saving) and delete the folder; return the seconds."""
        began = time.monotonic()
        for node in self.nodes:
            self.kill(node.index)
        shutil.rmtree(self.root, ignore_errors=True)
        self.timings["destroy"] = time.monotonic() - began
        return self.timings["destroy"]


# --- PostgreSQL primary + standby --------------------------------------------------------------


STANDBY_NAME = "standby"


class PgStandby(PgCluster):
    """A streaming-replication standby, cloned from a running primary by ``pg_basebackup``."""

    def clone(self, primary: PgCluster) -> PgStandby:
        """Copy the primary, with a replication slot, and set it up to follow it."""
        self._run(
            pg_binary("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-D",
            str(self.data),
            "-R",  # standby.signal and primary_conninfo
            "-C",
            "-S",
            STANDBY_NAME,
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        # The name the primary's synchronous_standby_names refers to; -R does not set one.
        self.follow(primary.port)
        return self

    def follow(self, port: int) -> None:
        """Set ``primary_conninfo`` in the configuration file (read at start and on reload)."""
        conninfo = (
            f"host=127.0.0.1 port={port} user=postgres application_name={STANDBY_NAME} "
            "connect_timeout=2"
        )
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")

    def promote(self) -> float:
        """Promote the standby to a primary and wait until it accepts writes."""
        began = time.monotonic()
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")
        return time.monotonic() - began


class PgReplicatedPair:
    """A PostgreSQL primary and one streaming standby, each a throwaway cluster on loopback.

    ``synchronous=True`` makes every commit wait until the standby has flushed it
    (``synchronous_standby_names`` + ``synchronous_commit = on``): a failover loses nothing
    acknowledged. ``synchronous=False`` is PostgreSQL's default asynchronous replication,
    where :meth:`cut_replication` lets a test lose the primary's last commits on purpose.
    """

    def __init__(self, *, synchronous: bool) -> None:
        self.synchronous = synchronous
        self.primary = PgCluster()
        self.standby = PgStandby()
        self.timings: dict[str, float] = {}

    def start(self, timeout: float = 60) -> float:
        """Start the primary, clone and start the standby, wait until it streams (in sync)."""
        began = time.monotonic()
        self.primary.init()
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            # Streaming replication (wal_level is already replica by default); a short sender
            # timeout so the primary notices a standby gone within seconds.
            conf.write("wal_level = replica\nmax_wal_senders = 4\nwal_sender_timeout = 5s\n")
        self.primary.start()
        self.standby.clone(self.primary)
        self.standby.start()
        self.wait_streaming(timeout)
        if self.synchronous:
            # Set after the clone, so the standby (a primary after a failover) does not wait
            # for a standby of its own that does not exist.
            execute_sql(
                self.primary.url(),
                f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'",
                "ALTER SYSTEM SET synchronous_commit = 'on'",
                "SELECT pg_reload_conf()",
            )
            wait_for(lambda: self.sync_state() == "sync", timeout, "the standby as synchronous")
        self.timings["start"] = time.monotonic() - began
        return self.timings["start"]

    def sync_state(self) -> str | None:
        """Return the standby's ``sync_state`` on the primary (``async``/``sync``), None if none."""
        value = scalar_or_none(
            self.primary.url(),
            "SELECT sync_state FROM pg_stat_replication "
            f"WHERE application_name = '{STANDBY_NAME}' AND state = 'streaming'",
        )
        return None if value is None else str(value)

    def wait_streaming(self, timeout: float = 60) -> float:
        return wait_for(lambda: self.sync_state() is not None, timeout, "the standby streaming")

    def wait_caught_up(self, timeout: float = 30) -> float:
        """Wait until the standby has replayed everything the primary has written so far."""
        target = scalar_or_none(self.primary.url(), "SELECT pg_current_wal_lsn()::text")
        return wait_for(
            lambda: bool(
                scalar_or_none(
                    self.standby.url(),
                    f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn",
                )
            ),
            timeout,
            "the standby caught up",
        )

    def cut_replication(self, timeout: float = 10) -> float:
        """Stop the standby receiving WAL, as a lagging asynchronous standby would.

        The standby forgets ``primary_conninfo`` on a reload, which ends its WAL receiver
        (PostgreSQL 13 and later); the primary goes on committing alone (asynchronous), and
        whatever it commits from now on is lost when it crashes and the standby is promoted.
        Pausing replay (``pg_wal_replay_pause``) would not do: promotion replays everything
        received first.
        """
        if self.synchronous:
            raise RuntimeError("a synchronous primary would wait for the standby forever")
        execute_sql(
            self.standby.url(),
            "ALTER SYSTEM SET primary_conninfo = ''",
            "SELECT pg_reload_conf()",
        )
        return wait_for(
            lambda: (
                scalar_or_none(self.standby.url(), "SELECT count(*) FROM pg_stat_wal_receiver") == 0
            ),
            timeout,
            "the standby's WAL receiver stopped",
        )

    def crash_primary(self) -> float:
        """Stop the primary with ``-m immediate``: no shutdown checkpoint, clients cut off."""
        self.timings["crash primary"] = self.primary.stop("immediate")
        return self.timings["crash primary"]

    def promote(self) -> float:
        """Promote the standby; it then accepts writes on its own port."""
        self.timings["promote"] = self.standby.promote()
        return self.timings["promote"]

    def create_database(self, name: str) -> None:
        """Create an empty database on the primary and wait until the standby has it."""
        execute_sql(self.primary.url(), f"CREATE DATABASE {name}")
        self.wait_caught_up()

    def url(
        self, database: str, *, standby_first: bool = False, attrs: str | None = "read-write"
    ) -> str:
        """Return a multi-host URL in the ``?host=`` form SQLAlchemy understands."""
        query = "&".join(f"host=127.0.0.1:{port}" for port in self._ports(standby_first))
        if attrs:
            query += f"&target_session_attrs={attrs}"
        return f"postgresql://postgres@/{database}?{query}"

    def libpq_url(
        self, database: str, *, standby_first: bool = False, attrs: str | None = "read-write"
    ) -> str:
        """Return a multi-host URL in libpq's comma form (``@h1:p1,h2:p2/db``)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self._ports(standby_first))
        query = f"?target_session_attrs={attrs}" if attrs else ""
        return f"postgresql://postgres@{hosts}/{database}{query}"

    def _ports(self, standby_first: bool) -> list[int]:
        ports = [self.primary.port, self.standby.port]
        return ports[::-1] if standby_first else ports

    def destroy(self) -> float:
        """Crash-stop both servers if they run and delete their folders; return the seconds."""
        began = time.monotonic()
        self.standby.destroy()
        self.primary.destroy()
        self.timings["destroy"] = time.monotonic() - began
        return self.timings["destroy"]
