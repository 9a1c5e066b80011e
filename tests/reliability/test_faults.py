"""Faults on purpose: clients, servers and the database killed, stopped and locked under load.

Every scenario counts the IDs handed out, the duplicates and the gaps, asserts on them, and
records its figures (see ``http_load.record`` and docs/reliability.md). Loads are sized to
prove the property in seconds, not to stress the machine.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import idmanager
from idmanager import IdGeneratorUtil, parse_id

from .http_load import (
    CLIENT_TIMEOUT_S,
    Call,
    Keys,
    LoadClients,
    ServerProcess,
    assert_no_secret,
    assert_problem,
    last_values,
    record,
    server_env,
    tally,
    wait_until,
)
from .throwaway import PgCluster
from .txn_worker import ORDERS

WORKER = Path(__file__).with_name("txn_worker.py")


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test starts; every one still running is stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster, started, deleted at the end."""
    pg = PgCluster().init()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


def prefixes_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{chr(ord('A') + i)}" for i in range(n)]


# --- client processes killed mid-transaction (caller's transaction) -----------------------------


class Worker:
    """A txn_worker.py process, read line by line without blocking the others."""

    def __init__(self, url: str, prefix: str, log: Path) -> None:
        with log.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER), url, prefix],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.buffer = b""
        # "waiting" once told to go or after its commit was confirmed: its next transaction
        # is open (or about to be), queued on the row lock; "busy" while it holds or commits.
        self.state = "starting"

    def read_lines(self) -> list[str] | None:
        """Return the complete lines available now; None at end of file."""
        assert self.process.stdout is not None
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode().strip() for line in lines]

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                assert selector.select(max(0.0, deadline - time.monotonic())), "not ready"
                lines = self.read_lines()
                assert lines is not None, "the worker died before it was ready"
                if "ready" in lines:
                    return

    def send(self, command: str) -> None:
        self.state = "waiting" if command == "go" else "busy"
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


class KillRun:
    """Four workers on one prefix; the test answers each ``holding`` line or kills instead.

    At each of ``events`` holding lines the holder is told to commit, unless the event is in
    ``kill_at``: then it is SIGKILLed while it holds the row lock, and every other time a
    worker queued on the lock is killed as well. Killed workers are replaced by spares that
    are already connected, so the run never waits for a Python start.
    """

    def __init__(self, url: str, prefix: str, log: Path) -> None:
        self.url, self.prefix, self.log = url, prefix, log
        self.active: list[Worker] = []
        self.spares = [Worker(url, prefix, log) for _ in range(6)]
        self.selector = selectors.DefaultSelector()
        self.committed: list[str] = []  # IDs whose commit the workers confirmed
        self.killed_holding: list[tuple[str, int]] = []  # (ID held, pid)
        self.killed_waiting: list[int] = []

    def run(self, events: int, kill_at: set[int], timeout: float = 90) -> None:
        try:
            for _ in range(4):
                self._enlist()
            seen = 0
            deadline = time.monotonic() + timeout
            while self.active:
                assert time.monotonic() < deadline, "the kill scenario did not finish in time"
                ready = self.selector.select(timeout=20)
                assert ready, f"no progress for 20 s:\n{self.log.read_text()[-3000:]}"
                for key, _ in ready:
                    if key.data in self.active:
                        seen = self._serve(key.data, seen, events, kill_at)
        finally:
            for worker in self.active + self.spares:
                if worker.process.poll() is None:
                    worker.kill()
            self.selector.close()

    def _serve(self, worker: Worker, seen: int, events: int, kill_at: set[int]) -> int:
        lines = worker.read_lines()
        if lines is None:  # it quit
            assert worker.process.wait(timeout=10) == 0, self.log.read_text()[-3000:]
            self._discharge(worker)
            return seen
        for line in lines:
            verb, _, issued = line.partition(" ")
            if verb == "committed":
                self.committed.append(issued)
                worker.state = "waiting"
                continue
            assert verb == "holding", line
            worker.state = "busy"
            if seen >= events:
                worker.send("quit")
                continue
            if seen in kill_at:
                # The others have a transaction open, queued on the row lock ``worker`` holds.
                waiting = next((w for w in self.active if w.state == "waiting"), None)
                if len(self.killed_holding) % 2 and waiting is not None:
                    waiting.kill()
                    self.killed_waiting.append(waiting.process.pid)
                    self._discharge(waiting)
                    self._enlist()
                worker.kill()  # mid-transaction: it holds the ID and the row lock
                self.killed_holding.append((issued, worker.process.pid))
                self._discharge(worker)
                self._enlist()
            else:
                worker.send("commit")
            seen += 1
        return seen

    def _enlist(self) -> None:
        worker = self.spares.pop(0)
        worker.wait_ready()
        worker.send("go")
        self.active.append(worker)
        self.selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
        if len(self.spares) < 2:  # start the next replacement while this one works
            self.spares.append(Worker(self.url, self.prefix, self.log))

    def _discharge(self, worker: Worker) -> None:
        self.selector.unregister(worker.process.stdout)
        self.active.remove(worker)


def committed_orders(url: str, prefix: str) -> list[tuple[str, int]]:
    """Return (business ID, worker pid) of every committed order row of ``prefix``."""
    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(ORDERS.c.business_id, ORDERS.c.worker).where(
                    ORDERS.c.business_id.like(f"{prefix}-%")
                )
            ).all()
    finally:
        engine.dispose()
    return [(str(b), int(w)) for b, w in rows]


@pytest.mark.parametrize(
    ("backend", "commits", "kills"),
    [("postgresql", 80, 8), ("sqlite", 50, 6), ("mariadb", 50, 6)],
)
def test_clients_killed_mid_transaction(
    backend: str, url: str, prefix: str, tmp_path: Path, commits: int, kills: int
) -> None:
    """SIGKILLed clients lose their transaction: their numbers go to the next committer."""
    engine = idmanager.create_engine(url)
    ORDERS.create(engine, checkfirst=True)
    with Session(engine) as session:  # create the sequence (see test_concurrency on MariaDB)
        first = IdGeneratorUtil.generate_id(prefix, session)
        session.execute(ORDERS.insert().values(business_id=first, worker=0))
        session.commit()
    engine.dispose()
    events = commits + kills
    # Never the last event: every killed number must have a later committer.
    kill_at = set(random.Random(f"{backend}-kills").sample(range(1, events - 1), kills))
    run = KillRun(url, prefix, tmp_path / "workers.log")
    run.run(events, kill_at)

    rows = committed_orders(url, prefix)
    ids = [business_id for business_id, _ in rows]
    ordinals = sorted(parse_id(i).ordinal for i in ids)
    issued_total = last_values(url, [prefix])[prefix]
    duplicates = len(ids) - len(set(ids))
    gaps = issued_total - len(set(ordinals))
    killed_ids = {issued for issued, _ in run.killed_holding}
    record(
        f"clients killed mid-transaction ({backend})",
        {
            "committed_ids": len(ids),
            "clients_killed_holding_the_lock": len(run.killed_holding),
            "clients_killed_waiting_for_the_lock": len(run.killed_waiting),
            "numbers_of_killed_transactions_handed_out_again": len(killed_ids & set(ids)),
            "duplicates": duplicates,
            "gaps": gaps,
            "last_value": issued_total,
        },
    )
    assert duplicates == 0
    assert ordinals == list(range(1, len(ids) + 1)), "committed IDs are not contiguous"
    assert gaps == 0 and issued_total == len(ids)
    assert len(run.committed) == commits
    assert sorted([*run.committed, first]) == sorted(ids), "confirmed commits != rows"
    assert len(run.killed_holding) == kills
    assert killed_ids <= set(ids), "a killed transaction's number was not handed out again"
    # The killed client's own row went with its transaction; another client's row has the ID.
    assert not set(run.killed_holding) & set(rows), "a killed transaction's row survived"


# --- the HTTP server killed under load ----------------------------------------------------------


def _wait_for_201(load: LoadClients, after: float, timeout: float = 15) -> float:
    """Wait for a successful allocation that began after ``after``; return when it ended."""
    found: list[Call] = []

    def arrived() -> bool:
        found[:] = [c for c in load.snapshot() if c.status == 201 and c.start >= after]
        return bool(found)

    wait_until(arrived, timeout)
    return min(c.end for c in found)


def _successes(load: LoadClients) -> int:
    return sum(1 for c in load.snapshot() if c.status == 201)


def test_http_server_killed_under_load_and_restarted(
    databases: Any, keys: Keys, servers: list[ServerProcess], prefix: str, tmp_path: Path
) -> None:
    """SIGKILL the only server twice under load: clients get errors, never a duplicate."""
    url = databases.create("postgresql")
    server = ServerProcess("killed", server_env(url, keys), tmp_path)
    servers.append(server)
    server.start()
    names = prefixes_of(prefix, 3)
    load = LoadClients([server], keys, names, ["generate"] * 4, max_seconds=60).start()
    restarts = []
    try:
        for _ in range(2):
            done = _successes(load)
            wait_until(lambda done=done: _successes(load) >= done + 40, 20)
            killed_at = time.monotonic()
            server.kill()  # mid-load: requests in flight lose their answer
            time.sleep(0.2)  # clients meet a closed port
            startup = server.start()
            back = _wait_for_201(load, server_started := time.monotonic())
            restarts.append(
                {
                    "downtime_s": round(server_started - killed_at, 2),
                    "startup_s": round(startup, 2),
                    "first_id_after_start_s": round(back - server_started, 2),
                }
            )
        done = _successes(load)
        wait_until(lambda: _successes(load) >= done + 40, 20)
    finally:
        calls = load.stop()
    result = tally(calls, last_values(url, names))
    record(
        "HTTP server killed under load and restarted",
        {**result.figures(), "kills": len(restarts), "restarts": restarts},
    )
    assert result.duplicates == 0
    assert result.order_violations == 0, "a prefix went backwards"
    # Only a request whose answer was lost in the kill can leave a gap.
    assert 0 <= result.gaps <= result.unknown_outcome_ids
    assert {c.status for c in calls if c.status is not None} == {201}, result.statuses
    failed = [c for c in calls if c.error]
    assert failed, "no request met the kill: the scenario proved nothing"
    assert_no_secret(keys.all, log=server.log(), bodies="".join(c.body for c in calls))


# --- PostgreSQL stopped and started under HTTP load ------------------------------------------


class HealthPoller:
    """A thread that asks /health every 100 ms, recording (start, end, status, body)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.results: list[tuple[float, float, int | None, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HealthPoller:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float, int | None, str]]:
        self._stop.set()
        self._thread.join(CLIENT_TIMEOUT_S + 5)
        return list(self.results)

    def _run(self) -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    response = client.get(self.server.url + "/health")
                    status, body = response.status_code, response.text
                except httpx.HTTPError as exc:
                    status, body = None, type(exc).__name__
                self.results.append((began, time.monotonic(), status, body))
                time.sleep(0.1)


HEALTH_CACHE_S = 1.0  # the service's default


def test_postgres_stopped_and_started_under_http_load(
    cluster: PgCluster, keys: Keys, servers: list[ServerProcess], prefix: str, tmp_path: Path
) -> None:
    """503 problem+json while PostgreSQL is down, healthy within 5 s of its return."""
    password = "pg-secret-" + os.urandom(6).hex()  # trust auth ignores it; it must not leak
    url = cluster.create_database("idm")
    url_with_password = cluster.url("idm", password=password)
    server = ServerProcess(
        "outage",
        server_env(url_with_password, keys, lock_timeout_ms="1000", pool_size="4"),
        tmp_path,
    )
    servers.append(server)
    server.start()
    names = prefixes_of(prefix, 2)
    roles: list[str | None] = ["generate"] * 4 + ["wrong", "read"]
    load = LoadClients([server], keys, names, roles, max_seconds=60, pause=0.01).start()
    health = HealthPoller(server).start()
    outages = []
    try:
        wait_until(lambda: _successes(load) >= 40, 20)
        for mode in ("fast", "immediate"):  # a clean stop, then a crash
            stop_began = time.monotonic()
            cluster.stop(mode)
            down = time.monotonic()
            time.sleep(2.0)
            start_began = time.monotonic()
            cluster.start()
            up = time.monotonic()
            back = _wait_for_201(load, up)
            wait_until(lambda up=up: any(s == 200 and b >= up for b, _, s, _ in health.results), 10)
            healthy = min(e for b, e, s, _ in health.results if s == 200 and b >= up)
            outages.append(
                {
                    "mode": mode,
                    "stop_began": stop_began,
                    "down": down,
                    "start_began": start_began,
                    "up": up,
                    "healthy_after_s": round(healthy - up, 2),
                    "first_id_after_s": round(back - up, 2),
                }
            )
            done = _successes(load)
            wait_until(lambda done=done: _successes(load) >= done + 30, 20)
    finally:
        calls = load.stop()
        checks = health.stop()

    generating = [c for c in calls if roles[c.client] == "generate"]
    result = tally(generating, last_values(url, names))
    during = [
        c for c in generating for o in outages if c.start >= o["down"] and c.end <= o["start_began"]
    ]
    refused = [c for c in generating if c.status == 503]
    figures = {
        **result.figures(),
        "outages": [
            {k: v for k, v in o.items() if k in ("mode", "healthy_after_s", "first_id_after_s")}
            for o in outages
        ],
        "requests_while_down": len(during),
        "slowest_503_s": round(max((c.end - c.start for c in refused), default=0), 3),
        "statuses_wrong_key": sorted({c.status for c in calls if roles[c.client] == "wrong"}),
        "statuses_read_key": sorted({c.status for c in calls if roles[c.client] == "read"}),
    }
    record("PostgreSQL stopped and started under HTTP load", figures)

    assert result.duplicates == 0
    assert result.order_violations == 0
    assert 0 <= result.gaps <= result.unknown_outcome_ids
    # No hang and no 500: every request answered within the client timeout, 201 or 503.
    assert [c for c in calls if c.error] == []
    assert {c.status for c in generating} <= {201, 503}, result.statuses
    assert len(during) >= 20, "too few requests met the outage to prove anything"
    for call in during:
        problem = assert_problem(call, 503)
        assert problem["type"] == "urn:idmanager:problem:storage-unavailable"
        assert call.retry_after
    for o in outages:
        assert o["healthy_after_s"] < 5 and o["first_id_after_s"] < 5, o
        # Health checks share one probe a second (IDMANAGER_HEALTH_CACHE_S): the first second
        # after the stop may still show the last healthy probe.
        fresh = o["down"] + HEALTH_CACHE_S
        down_checks = [s for b, e, s, _ in checks if b >= fresh and e <= o["start_began"]]
        assert down_checks and set(down_checks) == {503}, down_checks
    # The access rules do not depend on the database: 401 and 403 even while it is down.
    assert {c.status for c in calls if roles[c.client] == "wrong"} == {401}
    assert {c.status for c in calls if roles[c.client] == "read"} == {403}
    assert_no_secret(
        [*keys.all, password],
        log=server.log(),
        bodies="".join(c.body for c in calls) + "".join(body for *_, body in checks),
    )


# --- a sequence locked by a long transaction elsewhere ---------------------------------------

LOCK_TIMEOUT_MS = 700


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_locked_sequence_fails_with_503_after_the_lock_timeout(
    backend: str,
    url: str,
    keys: Keys,
    servers: list[ServerProcess],
    prefix: str,
    tmp_path: Path,
) -> None:
    """Requests queued behind a caller's long transaction get 503 after the lock timeout."""
    server = ServerProcess(
        f"locked-{backend}", server_env(url, keys, lock_timeout_ms=str(LOCK_TIMEOUT_MS)), tmp_path
    )
    servers.append(server)
    server.start()
    headers = keys.header("generate")
    allocate = f"{server.url}/api/v1/prefixes/{prefix}/ids"
    first = httpx.post(allocate, headers=headers, timeout=CLIENT_TIMEOUT_S).json()["ids"]
    # MySQL's lock wait is in whole seconds: the service rounds the setting up.
    expected = LOCK_TIMEOUT_MS / 1000 if backend == "postgresql" else 1.0

    results: dict[str, tuple[float, httpx.Response]] = {}

    def request(name: str, method: str, target: str) -> None:
        began = time.monotonic()
        with httpx.Client(headers=headers, timeout=CLIENT_TIMEOUT_S + expected) as client:
            response = client.request(method, target)
        results[name] = (time.monotonic() - began, response)

    engine = idmanager.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with Session(engine) as holder:
            # The caller's-transaction mode: the row stays locked until the holder commits.
            held = IdGeneratorUtil.generate_id(prefix, holder)
            calls = [(f"blocked-{i}", "POST", allocate) for i in range(4)]
            calls += [
                ("other-prefix", "POST", f"{server.url}/api/v1/prefixes/{prefix}_FREE/ids"),
                ("health", "GET", f"{server.url}/health"),
            ]
            threads = [threading.Thread(target=request, args=call) for call in calls]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(CLIENT_TIMEOUT_S + expected + 5)
            holder.commit()
        after = httpx.post(allocate, headers=headers, timeout=CLIENT_TIMEOUT_S).json()["ids"]
    finally:
        engine.dispose()

    blocked = [results[f"blocked-{i}"] for i in range(4)]
    waits = sorted(round(elapsed, 3) for elapsed, _ in blocked)
    issued = [*first, held, *after]
    ordinals = [parse_id(i).ordinal for i in issued]
    record(
        f"sequence locked by a long transaction ({backend})",
        {
            "lock_timeout_s": expected,
            "blocked_requests": len(blocked),
            "statuses": sorted(r.status_code for _, r in blocked),
            "waits_s": waits,
            "other_prefix_s": round(results["other-prefix"][0], 3),
            "ids": len(issued),
            "duplicates": len(issued) - len(set(issued)),
            "gaps": ordinals[-1] - len(set(ordinals)),
        },
    )
    for elapsed, response in blocked:
        problem = assert_problem(response, 503)
        # Busy, not an outage: the database is up, another transaction holds the sequence.
        assert problem["type"] == "urn:idmanager:problem:sequence-busy"
        assert response.headers["retry-after"]
        # Not before the configured timeout, and not much after it: no hang.
        assert expected * 0.9 <= elapsed < expected + 3, waits
    # Other sequences and the health check do not wait for the locked row: the holder commits
    # only once every request has ended, so one that waited for it would have timed out (503).
    assert results["other-prefix"][1].status_code == 201
    assert results["health"][1].status_code == 200
    # The refused requests took nothing: the sequence continues right after the holder's ID.
    assert ordinals == [1, 2, 3], issued


# --- three replicas on one PostgreSQL --------------------------------------------------------


def test_three_replicas_on_one_postgres(
    databases: Any, keys: Keys, servers: list[ServerProcess], prefix: str, tmp_path: Path
) -> None:
    """Clients spread over three server processes: one sequence, no duplicate, no gap."""
    url = databases.create("postgresql", migrate=False)  # the replicas migrate it, together
    replicas = [
        ServerProcess(f"replica-{i}", server_env(url, keys), tmp_path / f"r{i}") for i in range(3)
    ]
    for replica in replicas:
        replica.workdir.mkdir()
        servers.append(replica)
        replica.start(wait=False)
    for replica in replicas:
        replica.wait_live()
    names = prefixes_of(prefix, 3)
    # Six clients allocate; three intruders (unknown key, read-only key, no key) try too.
    roles: list[str | None] = ["generate"] * 6 + ["wrong", "read", None]
    load = LoadClients(replicas, keys, names, roles, max_calls=60, max_seconds=60).start()
    calls = load.wait()

    generating = [c for c in calls if roles[c.client] == "generate"]
    intruding = [c for c in calls if roles[c.client] != "generate"]
    result = tally(generating, last_values(url, names))
    per_replica = {
        r.name: sum(len(c.ids) for c in generating if c.server == r.name) for r in replicas
    }
    record(
        "three replicas on one PostgreSQL",
        {
            **result.figures(),
            "ids_per_replica": per_replica,
            "intruder_statuses": {
                str(role): sorted({c.status for c in intruding if roles[c.client] == role})
                for role in ("wrong", "read", None)
            },
        },
    )
    assert result.calls == 6 * 60 and result.statuses == {"201": 360}
    assert result.duplicates == 0
    assert result.gaps == 0  # every request was answered: nothing may be missing
    assert result.order_violations == 0, "a prefix went backwards on some replica"
    assert all(n > 0 for n in per_replica.values())
    for replica in replicas:  # each client's own view of each replica: increasing
        for i in range(6):
            for name in names:
                seen = [
                    parse_id(x).ordinal
                    for c in generating
                    if (c.server, c.client, c.prefix) == (replica.name, i, name)
                    for x in c.ids
                ]
                assert seen == sorted(seen) and len(seen) == len(set(seen))
    # The access rules held on every replica throughout the run.
    for call in intruding:
        assert_problem(call, 403 if roles[call.client] == "read" else 401)
    assert {c.server for c in intruding} == {r.name for r in replicas}
    assert_no_secret(
        keys.all,
        logs="".join(r.log() for r in replicas),
        bodies="".join(c.body for c in calls),
    )
