"""The throwaway clusters themselves: they start, replicate, survive a kill or a failover, stop.

These prove the test infrastructure, not IdManager: if one fails, the scaling tests that use the
same cluster would fail for a reason that is not theirs. Each records how long its steps took.
"""

from __future__ import annotations

import sqlalchemy as sa

import idmanager

from .clusters import GaleraCluster, PgReplicatedPair
from .http_load import record


def _run(url: str, *statements: str) -> list[object]:
    """Run statements in one autocommit connection; return the first column of the last one."""
    engine = idmanager.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            result = None
            for statement in statements:
                result = connection.exec_driver_sql(statement)
            return list(result.scalars()) if result is not None and result.returns_rows else []
    finally:
        engine.dispose()


# Galera applies a writeset on the other nodes just after the commit returns: a read must ask
# to wait for it (wsrep_sync_wait) to be sure to see a write made on another node.
_CAUSAL = "SET SESSION wsrep_sync_wait = 1"


def test_galera_replicates_and_a_killed_node_rejoins(galera: GaleraCluster) -> None:
    urls = galera.create_database("smoke")
    _run(urls[0], "CREATE TABLE t (node INT PRIMARY KEY)")
    for index, url in enumerate(urls):
        _run(url, f"INSERT INTO t VALUES ({index})")
    for url in urls:
        assert _run(url, _CAUSAL, "SELECT node FROM t ORDER BY node") == [0, 1, 2]

    galera.kill(1)
    galera.wait_evicted(1)
    assert galera.cluster_size(0) == 2
    _run(urls[0], "INSERT INTO t VALUES (10)")
    _run(urls[2], "INSERT INTO t VALUES (12)")
    galera.restart(1)

    assert galera.state(1) == "Synced"
    assert galera.cluster_size(1) == 3
    assert _run(urls[1], _CAUSAL, "SELECT node FROM t ORDER BY node") == [0, 1, 2, 10, 12]
    galera.destroy()
    assert not any(node.alive() for node in galera.nodes)
    assert not galera.root.exists()
    record("galera smoke", {k: round(v, 2) for k, v in galera.timings.items()})


def _fail_over(pair: PgReplicatedPair) -> list[object]:
    """Write 1 and 2 on the primary (2 after a cut if async), crash it, promote, write 3."""
    url = pair.primary.url("smoke")
    pair.create_database("smoke")
    _run(url, "CREATE TABLE t (n INT PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    pair.wait_caught_up()
    assert _run(pair.standby.url("smoke"), "SELECT n FROM t") == [1]
    if not pair.synchronous:
        pair.cut_replication()
    _run(url, "INSERT INTO t VALUES (2)")
    pair.crash_primary()
    pair.promote()
    # Through the multi-host URL: the dead primary is skipped, the promoted standby found.
    multi_host = pair.url("smoke")
    _run(multi_host, "INSERT INTO t VALUES (3)")
    return _run(multi_host, "SELECT n FROM t ORDER BY n")


def test_pg_synchronous_failover_keeps_every_commit(pg_sync_pair: PgReplicatedPair) -> None:
    assert pg_sync_pair.sync_state() == "sync"
    assert _fail_over(pg_sync_pair) == [1, 2, 3]
    pg_sync_pair.destroy()
    assert not pg_sync_pair.primary.root.exists() and not pg_sync_pair.standby.root.exists()
    record("pg sync pair smoke", {k: round(v, 2) for k, v in pg_sync_pair.timings.items()})


def test_pg_asynchronous_failover_loses_what_was_not_shipped(
    pg_async_pair: PgReplicatedPair,
) -> None:
    assert pg_async_pair.sync_state() == "async"
    # 2 was committed (acknowledged) on the primary after the standby stopped receiving.
    assert _fail_over(pg_async_pair) == [1, 3]
    pg_async_pair.destroy()
    record("pg async pair smoke", {k: round(v, 2) for k, v in pg_async_pair.timings.items()})
