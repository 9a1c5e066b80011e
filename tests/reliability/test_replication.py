"""Replicated engines under faults: a Galera node killed, a PostgreSQL primary crashed.

Each test starts its own cluster on loopback (:mod:`clusters`), loads it with writers through
IdManager's public API, and checks what the promises say: no ID committed twice, committed IDs
without gaps (an ID whose allocation's outcome was unknown aside), conflicts retried and never
reported as an outage, and clients that recover without a restart. The figures are recorded
(:func:`http_load.record`); docs/scaling.md quotes them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from typer.testing import CliRunner

import idmanager
from api_keys import Keys
from idmanager import BusyError, IdManagerError, StorageError, TransactionConflictError, parse_id
from idmanager.cli import app as cli
from idmanager.orm import install, numbered

from .clusters import GaleraCluster, PgReplicatedPair
from .http_load import (
    LoadClients,
    ServerProcess,
    assert_problem,
    last_values,
    record,
    server_env,
    tally,
)

# A writer that failed waits this long before its next attempt: an outage is counted in the
# attempts a client would make, not in a busy loop's spins.
PAUSE_AFTER_FAILURE_S = 0.02


@dataclass
class Outcome:
    """What one group of writers got: each ID and each failure, with the time it came."""

    ids: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, BaseException, str]] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        """Count the failures by stage, type and first words of the driver's message."""
        return dict(
            Counter(
                f"{stage}: {type(exc).__name__} <- {_cause(exc)}" for _, exc, stage in self.failures
            )
        )

    def ids_between(self, start: float, end: float = float("inf")) -> int:
        return sum(1 for moment, _ in self.ids if start <= moment < end)


def _cause(exc: BaseException) -> str:
    """Return the driver's exception under ``exc``, with its MySQL error number if any."""
    cause = exc.__cause__ or exc
    driver = getattr(cause, "orig", None) or cause
    number = driver.args[0] if driver.args and isinstance(driver.args[0], int) else ""
    return f"{type(driver).__name__} {number}".strip()


def outcome_unknown(exc: BaseException) -> bool:
    """Return True for a connection lost after the statement was sent (MySQL 2013, 2006)."""
    return isinstance(exc, StorageError) and _cause(exc).endswith((" 2013", " 2006"))


class Writers:
    """Threads that call ``work`` (which returns the IDs it got) until stopped."""

    def __init__(self, name: str, work: Callable[[], list[str]], threads: int) -> None:
        self.name = name
        self.outcome = Outcome()
        self._work = work
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Outcome:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a writer hung"
        return self.outcome

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ids = self._work()
            except Exception as exc:  # every failure is recorded, and judged by the test
                stage = " ".join([self.name, *getattr(exc, "__notes__", ())])
                with self._lock:
                    self.outcome.failures.append((time.monotonic(), exc, stage))
                time.sleep(PAUSE_AFTER_FAILURE_S)
                continue
            now = time.monotonic()
            with self._lock:
                self.outcome.ids.extend((now, new_id) for new_id in ids)


def duplicates(ids: list[str]) -> int:
    counted = Counter((parsed.prefix, parsed.ordinal) for parsed in map(parse_id, ids))
    return sum(count - 1 for count in counted.values() if count > 1)


def longest_pause(moments: list[float], start: float, end: float) -> float:
    """Return the longest time between ``start`` and ``end`` without any ID."""
    inside = sorted(m for m in moments if start <= m <= end)
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def doctor(url: str) -> tuple[int, dict[str, object]]:
    """Run ``idmanager doctor --json`` in-process; return its exit code and its document."""
    result = CliRunner().invoke(cli, ["doctor", "--database-url", url, "--json"])
    return result.exit_code, json.loads(result.stdout)


def check(document: dict[str, object], name: str) -> dict[str, str]:
    checks = document["checks"]
    assert isinstance(checks, list)
    return next(c for c in checks if c["name"] == name)


# --- Galera --------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    """A row numbered by the ORM integration, in the caller's transaction."""

    __tablename__ = "repl_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(40), info=numbered("ORD"))


def test_galera_writers_on_every_node_while_a_node_is_killed_and_rejoins(
    galera: GaleraCluster,
) -> None:
    urls = galera.create_database("repl")
    idmanager.migrate(urls[0])
    code, document = doctor(urls[0])
    assert code == 0 and check(document, "cluster")["status"] == "ok", document
    assert "3 nodes, Primary" in check(document, "cluster")["message"]
    assert "send each prefix's writes to one node" in check(document, "galera writes")["message"]
    engines = [
        idmanager.create_engine(url, pool_size=3, connect_args={"connect_timeout": 2})
        for url in urls
    ]
    Base.metadata.create_all(engines[0])
    # Own transactions on a prefix that none of them has created yet, three threads a node.
    own = [idmanager.connect(engine) for engine in engines]

    def allocate(use_cases: idmanager.SyncIdManagerUseCases) -> Callable[[], list[str]]:
        return lambda: use_cases.allocate("GAL")[:]

    # The caller's transaction through the ORM: numbered at flush, committed by the caller.
    def order(factory: sessionmaker[Session]) -> Callable[[], list[str]]:
        def work() -> list[str]:
            with factory() as session:
                row = Order()
                session.add(row)
                session.flush()  # the allocation, in the caller's transaction
                # Read before the commit: after it the row is expired, and reading it would be
                # a query of the test's own, to a node that may be gone by then.
                number = row.number
                try:
                    session.commit()  # Galera certifies here
                except IdManagerError as exc:
                    exc.add_note("at commit")
                    raise
                assert number is not None
                return [number]

        return work

    factories = [sessionmaker(engine) for engine in engines]
    for factory in factories:
        install(factory)
    writers = [Writers(f"own@node{i}", allocate(u), 3).start() for i, u in enumerate(own)]
    callers = [Writers(f"orm@node{i}", order(f), 2).start() for i, f in enumerate(factories)]
    began = time.monotonic()

    time.sleep(3)
    killed = time.monotonic()
    galera.kill(2)
    galera.wait_evicted(2)
    evicted = time.monotonic()
    code, document = doctor(urls[0])
    assert code == 0 and check(document, "cluster")["status"] == "warn", document
    galera.restart(2)
    synced = time.monotonic()
    time.sleep(3)
    outcomes = [w.stop() for w in writers]
    orm = [w.stop() for w in callers]
    ended = time.monotonic()

    with engines[0].connect() as connection:
        connection.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
        numbers = list(connection.execute(sa.select(Order.number)).scalars())
        counters = dict(
            connection.execute(sa.text("SELECT prefix, last_value FROM id_managers")).all()
        )
        creations = connection.execute(
            sa.text(
                "SELECT prefix, count(*) FROM id_manager_audit "
                "WHERE action = 'create' GROUP BY prefix"
            )
        ).all()
    for engine in engines:
        engine.dispose()

    ids = [new_id for outcome in outcomes for _, new_id in outcome.ids]
    ordinals = {parse_id(new_id).ordinal for new_id in ids}
    assert "GAL" in counters, ([o.kinds() for o in outcomes], len(ids), counters)
    failures = [failure for outcome in (*outcomes, *orm) for failure in outcome.failures]
    # No ID twice, anywhere: the own transactions' and the committed rows'.
    assert duplicates(ids) == 0
    assert duplicates([n for n in numbers if n]) == 0
    # The rows are what was committed: their numbers are 1..last_value, not one missing.
    assert sorted(parse_id(n).ordinal for n in numbers) == list(range(1, counters["ORD"] + 1))
    # Own transactions: an ID missing is one whose reply was lost with the killed node.
    lost_replies = [f for f in outcomes[2].failures if outcome_unknown(f[1])]
    gaps = counters["GAL"] - len(ordinals)
    assert max(ordinals) <= counters["GAL"] and 0 <= gaps <= len(lost_replies)
    # Created once each, under contention from every node, and audited once.
    assert dict(creations) == {"GAL": 1, "ORD": 1}
    # Every failure is IdManager's, and a conflict is never an outage: the survivors' writers
    # never saw StorageError; the killed node's saw it while it was away.
    foreign = [exc for _, exc, _ in failures if not isinstance(exc, IdManagerError)]
    assert not foreign, "".join(traceback.format_exception(foreign[0]))
    for outcome in (*outcomes[:2], *orm[:2]):
        assert all(isinstance(exc, BusyError) for _, exc, _ in outcome.failures)
    for outcome in (outcomes[2], orm[2]):
        for moment, exc, _ in outcome.failures:
            assert isinstance(exc, BusyError) or killed <= moment <= synced + 5, exc
    retried = sum(use_cases.transactions.conflicts_retried for use_cases in own)
    assert retried > 0
    # The killed node's clients are back by themselves, without a restart of theirs.
    assert outcomes[2].ids_between(synced) > 0 and orm[2].ids_between(synced) > 0
    at_commit = sum(
        1
        for outcome in orm
        for _, exc, _ in outcome.failures
        if isinstance(exc, TransactionConflictError)
        and "at commit" in getattr(exc, "__notes__", [])
    )
    survivors = [m for outcome in outcomes[:2] for m, _ in outcome.ids]
    record(
        "galera: 3 nodes, writers on each, node 2 killed and rejoined",
        {
            "seconds": round(ended - began, 1),
            "own_ids": len(ids),
            "orm_rows": len(numbers),
            "duplicates": duplicates(ids) + duplicates(numbers),
            "gaps": gaps,
            "lost_replies": len(lost_replies),
            "conflicts_retried": retried,
            "orm_conflicts_at_commit": at_commit,
            "failures": dict(sum((Counter(o.kinds()) for o in (*outcomes, *orm)), Counter())),
            "survivors_longest_pause_s": round(longest_pause(survivors, killed, synced), 2),
            "killed_to_evicted_s": round(evicted - killed, 2),
            "killed_to_synced_s": round(synced - killed, 2),
            "timings": {k: round(v, 2) for k, v in galera.timings.items()},
        },
    )


# --- PostgreSQL ------------------------------------------------------------------------------


def _library_writers(url: str, prefix: str, threads: int) -> tuple[Writers, sa.Engine, Outcome]:
    engine = idmanager.create_engine(url, pool_size=threads, connect_args={"connect_timeout": 2})
    use_cases = idmanager.connect(engine)
    writers = Writers("library", lambda: use_cases.allocate(prefix)[:], threads).start()
    return writers, engine, writers.outcome


def test_pg_synchronous_failover_under_load_issues_no_id_twice(
    pg_sync_pair: PgReplicatedPair, tmp_path: Path
) -> None:
    pair = pg_sync_pair
    pair.create_database("repl")
    idmanager.migrate(pair.primary.url("repl"))
    pair.wait_caught_up()
    code, document = doctor(pair.url("repl"))
    assert code == 0 and check(document, "replication")["status"] == "ok", document

    # The service (asyncpg) through the query form, the library (psycopg) through libpq's.
    keys = Keys()
    server = ServerProcess("svc", server_env(pair.url("repl"), keys), tmp_path)
    server.start()
    http = LoadClients([server], keys, ["SVC"], ["generate"] * 3, max_seconds=60).start()
    library, engine, outcome = _library_writers(pair.libpq_url("repl"), "LIB", 3)
    began = time.monotonic()
    try:
        time.sleep(2)
        crashed = time.monotonic()
        pair.crash_primary()
        time.sleep(0.5)
        pair.promote()
        promoted = time.monotonic()
        time.sleep(3)
        still_running = server.process is not None and server.process.poll() is None
    finally:
        calls = http.stop()
        library.stop()
        engine.dispose()
        server.stop()
    ended = time.monotonic()

    counted = tally(calls, last_values(pair.url("repl"), ["SVC"]))
    lib_last = last_values(pair.url("repl"), ["LIB"])["LIB"]
    lib_ids = [new_id for _, new_id in outcome.ids]
    lib_ordinals = {parse_id(new_id).ordinal for new_id in lib_ids}
    assert counted.duplicates == 0 and duplicates(lib_ids) == 0
    assert counted.gaps <= counted.unknown_outcome_ids
    assert lib_last - len(lib_ordinals) <= len(outcome.failures)
    # Unavailable while there was no primary, never anything else; then back by themselves.
    other = [exc for _, exc, _ in outcome.failures if not isinstance(exc, StorageError)]
    assert not other, "".join(traceback.format_exception(other[0]))
    assert set(counted.statuses) <= {"201", "503"}, counted.statuses
    assert server.starts == 1 and still_running
    assert outcome.ids_between(promoted) > 0
    assert any(c.status == 201 and c.start > promoted for c in calls)
    refused = [c for c in calls if c.status == 503]
    problems = Counter(assert_problem(c, 503)["type"].rsplit(":")[-1] for c in refused)
    assert set(problems) <= {"storage-unavailable"}, problems
    svc_moments = [c.end for c in calls if c.ids]
    record(
        "pg synchronous failover: service (asyncpg, ?host= URL) and library (psycopg, libpq URL)",
        {
            "seconds": round(ended - began, 1),
            "service": counted.figures(),
            "library": {
                "ids": len(lib_ids),
                "duplicates": duplicates(lib_ids),
                "gaps": lib_last - len(lib_ordinals),
                "failures": outcome.kinds(),
            },
            "service_longest_pause_s": round(longest_pause(svc_moments, crashed, promoted + 3), 2),
            "library_longest_pause_s": round(
                longest_pause([m for m, _ in outcome.ids], crashed, promoted + 3), 2
            ),
            "timings": {k: round(v, 2) for k, v in pair.timings.items()},
        },
    )


def test_pg_asynchronous_failover_issues_ids_twice_as_doctor_warned(
    pg_async_pair: PgReplicatedPair,
) -> None:
    pair = pg_async_pair
    pair.create_database("repl")
    idmanager.migrate(pair.primary.url("repl"))
    pair.wait_caught_up()
    code, document = doctor(pair.url("repl"))
    replication = check(document, "replication")
    assert code == 1 and replication["status"] == "fail", document
    assert "asynchronous" in replication["message"] and "issued again" in replication["message"]

    outcome, events = asyncio.run(_async_failover(pair))
    ids = [new_id for _, new_id in outcome.ids]
    ordinals = Counter(parse_id(new_id).ordinal for new_id in ids)
    twice = duplicates(ids)
    after_cut = outcome.ids_between(events["cut"], events["crashed"])
    last_value = last_values(pair.url("repl"), ["ASY"])["ASY"]
    # What doctor said: every ID acknowledged after the standby stopped receiving is issued
    # again once it is promoted (now, or by the next allocations: still_to_come).
    assert twice > 0
    still_to_come = sum(1 for n in ordinals if n > last_value)
    assert twice + still_to_come >= after_cut
    assert all(isinstance(exc, StorageError) for _, exc, _ in outcome.failures), outcome.kinds()
    assert outcome.ids_between(events["promoted"]) > 0
    record(
        "pg asynchronous failover: library (asyncpg, libpq URL), 2 s of writes not shipped",
        {
            "ids": len(ids),
            "ids_acknowledged_after_the_cut": after_cut,
            "duplicates": twice,
            "acknowledged_ids_still_to_be_issued_again": still_to_come,
            "failures": outcome.kinds(),
            "longest_pause_s": round(
                longest_pause([m for m, _ in outcome.ids], events["crashed"], events["end"]), 2
            ),
            "timings": {k: round(v, 2) for k, v in pair.timings.items()},
        },
    )


async def _async_failover(pair: PgReplicatedPair) -> tuple[Outcome, dict[str, float]]:
    """Write through asyncpg; cut replication at 1 s, crash the primary 2 s later, promote."""
    engine = idmanager.create_async_engine(
        pair.libpq_url("repl"), pool_size=4, connect_args={"timeout": 2}
    )
    use_cases = idmanager.connect(engine)
    outcome = Outcome()
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            try:
                ids = await use_cases.allocate("ASY")
            except Exception as exc:
                outcome.failures.append((time.monotonic(), exc, "own"))
                await asyncio.sleep(PAUSE_AFTER_FAILURE_S)
                continue
            now = time.monotonic()
            outcome.ids.extend((now, new_id) for new_id in ids)

    async def step(seconds: float, action: Callable[[], object] | None = None) -> float:
        await asyncio.sleep(seconds)
        if action is not None:
            await asyncio.to_thread(action)
        return time.monotonic()

    tasks = [asyncio.create_task(writer()) for _ in range(4)]
    events: dict[str, float] = {}
    try:
        events["cut"] = await step(1, pair.cut_replication)
        events["crashed"] = await step(2, pair.crash_primary)
        events["promoted"] = await step(0.3, pair.promote)
        events["end"] = await step(2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await engine.dispose()
    return outcome, events
