"""Measure IdManager on replicated clusters: the facts behind docs/scaling.md, in more detail.

Not a test: a probe that starts the throwaway clusters of :mod:`clusters`, runs loads
(:mod:`scaling_load`, one process per node or per client) while it kills, isolates or fails
over servers, and prints for every scenario the IDs, duplicates, gaps and every kind of failure
with its exception chain and driver code. From the repository root::

    PYTHONPATH=tests .venv/bin/python -m reliability.scaling_probe galera pg urls

writes ``scaling-probe.json`` in the system's temp folder (``--out`` to choose).

The load processes are *spawned* (a fork would copy the parent's threads and connections): a
script of your own that imports this module must keep its top level under
``if __name__ == "__main__":``, or every load process would run it again and start clusters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

import idmanager
from idmanager import IdGeneratorUtil, parse_id

from .clusters import GaleraCluster, PgReplicatedPair, execute_sql, scalar_or_none
from .scaling_load import RAW_TABLE, Load, Outcome, describe, run_load

# Seconds between starting the load processes and their common start (imports, connections).
WARMUP_S = 3.0
Faults = Callable[[float], dict[str, float]]


def run_loads(
    loads: list[Load], faults: Faults | None = None
) -> tuple[list[Outcome], dict[str, float]]:
    """Run the loads in processes of their own while ``faults(start_at)`` acts on the servers."""
    start_at = time.time() + WARMUP_S
    loads = [replace(load, start_at=start_at) for load in loads]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(loads), mp_context=context) as pool:
        futures = [pool.submit(run_load, load) for load in loads]
        events = faults(start_at) if faults else {}
        return [future.result() for future in futures], events


def at(start_at: float, offset: float) -> None:
    """Sleep until ``offset`` seconds after the loads' start."""
    time.sleep(max(0.0, start_at + offset - time.time()))


def ordinals(ids: list[str]) -> Counter[tuple[str, int]]:
    return Counter((parsed.prefix, parsed.ordinal) for parsed in map(parse_id, ids))


def summarize(
    outcomes: list[Outcome],
    last_values: dict[str, int],
    events: dict[str, float],
    *,
    raw: bool = False,
) -> dict[str, Any]:
    """Count IDs, duplicates, gaps and failures; split the IDs at the first event, if any."""
    start_at = min((out.started_at for out in outcomes), default=0.0)
    ids = [new_id for out in outcomes for _, new_id in out.ids]
    if raw:
        counted = Counter(tuple(new_id.rsplit("-", 1)) for new_id in ids)
        seen = Counter({(p, int(n)): c for (p, n), c in counted.items()})
    else:
        seen = ordinals(ids)
    duplicates = sum(count - 1 for count in seen.values() if count > 1)
    gaps = {
        prefix: last - len({n for (p, n) in seen if p == prefix})
        for prefix, last in last_values.items()
    }
    missing = _missing(outcomes, last_values, raw=raw)
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    where: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {}
    for out in outcomes:
        failures.update(out.failures)
        for key, text in out.examples.items():
            examples.setdefault(key, text)
            where.setdefault(key, out.where[key])
            times.setdefault(key, []).extend(out.failure_times[key])
    attempts = sum(out.attempts for out in outcomes)
    summary: dict[str, Any] = {
        "ids": len(ids),
        "attempts": attempts,
        "duplicates": duplicates,
        "duplicated_ids": sorted(f"{p}:{n}" for (p, n), c in seen.items() if c > 1)[:5],
        "last_values": last_values,
        "gaps": gaps,
        "missing": missing,
        "failures": {
            key: {
                "count": count,
                "example": examples[key],
                "raised_at": where[key],
                "first_s": round(min(times[key]) - start_at, 2),
                "last_s": round(max(times[key]) - start_at, 2),
            }
            for key, count in failures.most_common()
        },
        "events": {
            name: round(moment - start_at if moment > start_at else moment, 2)
            for name, moment in events.items()
        },
        "per_load": {
            out.label: {
                "ids": len(out.ids),
                "attempts": out.attempts,
                "slowest_s": round(out.slowest_s, 2),
            }
            for out in outcomes
        },
    }
    if "crash" in events:
        crash = events["crash"]
        summary["ids_before_crash"] = sum(
            1 for out in outcomes for moment, _ in out.ids if moment < crash
        )
        summary["ids_after_crash"] = len(ids) - summary["ids_before_crash"]
        summary["stall_s"] = round(_stall(outcomes, crash), 2)
    if "cut" in events:
        summary["ids_between_cut_and_crash"] = sum(
            1 for out in outcomes for moment, _ in out.ids if events["cut"] <= moment < crash
        )
    return summary


def _missing(
    outcomes: list[Outcome], last_values: dict[str, int], *, raw: bool
) -> list[dict[str, Any]]:
    """Return the first ordinals never handed out, with when the one before them came back.

    A gap among committed IDs is an allocation whose client got an error although it was
    committed: when it happened tells which failure it was.
    """
    start_at = min((out.started_at for out in outcomes), default=0.0)
    when: dict[tuple[str, int], float] = {}
    for out in outcomes:
        for moment, new_id in out.ids:
            if raw:
                prefix, number = new_id.rsplit("-", 1)
                when[(prefix, int(number))] = moment
            else:
                parsed = parse_id(new_id)
                when[(parsed.prefix, parsed.ordinal)] = moment
    found = []
    for prefix, last in last_values.items():
        for n in range(1, last + 1):
            if (prefix, n) not in when:
                before = when.get((prefix, n - 1))
                after = when.get((prefix, n + 1))
                found.append(
                    {
                        "ordinal": f"{prefix}:{n}",
                        "previous_at_s": round(before - start_at, 3) if before else None,
                        "next_at_s": round(after - start_at, 3) if after else None,
                    }
                )
    return found[:10]


def _stall(outcomes: list[Outcome], since: float) -> float:
    """Return the longest time after ``since`` during which no load got an ID."""
    moments = sorted(moment for out in outcomes for moment, _ in out.ids if moment >= since)
    gaps = [b - a for a, b in zip([since, *moments], moments, strict=False)]
    return max(gaps, default=0.0)


def last_value(url: str, prefix: str) -> int:
    value = scalar_or_none(
        url, f"SELECT last_value FROM id_managers WHERE prefix = '{prefix}' AND scope = ''"
    )
    return int(str(value)) if value is not None else 0


# --- Galera ------------------------------------------------------------------------------------


def galera_loads(
    urls: list[str], prefixes: tuple[str, ...], *, mode: str, driver: str, seconds: float
) -> list[Load]:
    """One load process per node, 8 workers each."""
    return [
        Load(url, prefixes, mode=mode, driver=driver, seconds=seconds, label=f"node{index}")
        for index, url in enumerate(urls)
    ]


def galera_scenario(
    cluster: GaleraCluster,
    urls: list[str],
    name: str,
    *,
    mode: str = "own",
    driver: str = "sync",
    prefixes: int = 1,
    seconds: float = 8.0,
    faults: Faults | None = None,
    nodes: list[int] | None = None,
) -> dict[str, Any]:
    stem = name.upper().replace("-", "_")
    names = tuple(f"{stem}_{i}" for i in range(prefixes))
    targets = [urls[i] for i in nodes] if nodes else urls
    loads = galera_loads(targets, names, mode=mode, driver=driver, seconds=seconds)
    outcomes, events = run_loads(loads, faults)
    if mode == "raw":
        lasts = {
            p: int(
                str(
                    scalar_or_none(
                        urls[0], f"SELECT last_value FROM {RAW_TABLE} WHERE name = '{p}'"
                    )
                    or 0
                )
            )
            for p in names
        }
    else:
        lasts = {p: last_value(urls[0], p) for p in names}
    return summarize(outcomes, lasts, events, raw=mode == "raw")


def kill_and_restart(cluster: GaleraCluster, index: int) -> Faults:
    def faults(start_at: float) -> dict[str, float]:
        at(start_at, 3)
        began = time.time()
        cluster.kill(index)
        evicted = cluster.wait_evicted(index)
        cluster.restart(index)
        return {
            "crash": began,
            "evicted_after_s": evicted,
            "synced_again_after_s": time.time() - began,
        }

    return faults


def isolate(cluster: GaleraCluster, index: int, seconds: float = 6.0) -> Faults:
    """Cut one node off the group (``gmcast.isolate``): it goes non-primary and answers 1047."""

    def faults(start_at: float) -> dict[str, float]:
        at(start_at, 2)
        began = time.time()
        cluster.isolate(index)
        at(start_at, 2 + seconds)
        cluster.isolate(index, False)
        cluster.wait_synced(index)
        return {"isolated": began, "synced_again_after_s": time.time() - began}

    return faults


def probe_galera(seconds: float) -> dict[str, Any]:
    cluster = GaleraCluster(3)
    results: dict[str, Any] = {}
    try:
        results["start_s"] = round(cluster.start(), 2)
        urls = cluster.create_database("probe")
        idmanager.migrate(urls[0])
        execute_sql(
            urls[0],
            f"CREATE TABLE {RAW_TABLE} (name VARCHAR(64) PRIMARY KEY, last_value BIGINT NOT NULL)",
        )

        def run(name: str, **options: Any) -> None:
            options.setdefault("seconds", seconds)
            results[name] = galera_scenario(cluster, urls, name, **options)
            print(name, json.dumps(results[name])[:400], flush=True)

        run("one-node-hot-own", nodes=[0, 0, 0])
        run("hot-own-sync", mode="own", driver="sync")
        run("hot-own-async", mode="own", driver="async")
        run("hot-caller-sync", mode="caller", driver="sync")
        run("hot-caller-async", mode="caller", driver="async")
        run("20-prefixes-own-sync", prefixes=20)
        for retries in (0, 1, 10):
            cluster.set_global("wsrep_retry_autocommit", retries)
            run(f"raw-autocommit-retry-{retries}", mode="raw")
        run("hot-own-sync-retry-10", mode="own")
        cluster.set_global("wsrep_retry_autocommit", 1)
        run("isolated-node-own-sync", faults=isolate(cluster, 2), seconds=seconds + 4)
        run("kill-node-own-sync", faults=kill_and_restart(cluster, 1), seconds=seconds + 8)
        run(
            "kill-node-caller-async",
            mode="caller",
            driver="async",
            faults=kill_and_restart(cluster, 2),
            seconds=seconds + 8,
        )
        results["timings"] = cluster.timings
    finally:
        results["destroy_s"] = round(cluster.destroy(), 2)
    return results


# --- PostgreSQL --------------------------------------------------------------------------------


def failover(pair: PgReplicatedPair, *, cut_s: float) -> Faults:
    """At 3 s, cut replication (asynchronous only), ``cut_s`` later crash the primary, promote."""

    def faults(start_at: float) -> dict[str, float]:
        events: dict[str, float] = {}
        at(start_at, 3)
        if not pair.synchronous:
            pair.cut_replication()
            events["cut"] = time.time()
        time.sleep(cut_s)
        events["crash"] = time.time()
        pair.crash_primary()
        time.sleep(0.5)  # a failover tool takes its time to decide
        pair.promote()
        events["promoted_after_s"] = time.time() - events["crash"]
        return events

    return faults


def pg_failover(*, synchronous: bool, driver: str, mode: str, seconds: float) -> dict[str, Any]:
    pair = PgReplicatedPair(synchronous=synchronous)
    try:
        pair.start()
        pair.create_database("probe")
        idmanager.migrate(pair.primary.url("probe"))
        pair.wait_caught_up()
        prefix = f"PG_{'SYNC' if synchronous else 'ASYNC'}_{driver.upper()}_{mode.upper()}"
        url = pair.url("probe")
        loads = [
            Load(url, (prefix,), mode=mode, driver=driver, seconds=seconds, label=f"client{n}")
            for n in range(2)
        ]
        outcomes, events = run_loads(loads, failover(pair, cut_s=2.0))
        result = summarize(
            outcomes, {prefix: last_value(pair.standby.url("probe"), prefix)}, events
        )
        result["timings"] = pair.timings
        return result
    finally:
        pair.destroy()


def probe_pg(seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for synchronous in (True, False):
        for driver in ("sync", "async"):
            for mode in ("own", "caller"):
                name = f"{'sync' if synchronous else 'async'}-replication-{driver}-{mode}"
                results[name] = pg_failover(
                    synchronous=synchronous, driver=driver, mode=mode, seconds=seconds
                )
                print(name, json.dumps(results[name])[:400], flush=True)
    return results


# --- multi-host URLs ---------------------------------------------------------------------------


def libpq_to_query_hosts(url: str) -> str:
    """Rewrite libpq's ``u@h1:p1,h2:p2/db`` as SQLAlchemy's ``u@/db?host=h1:p1&host=h2:p2``."""
    scheme, rest = url.split("://", 1)
    userinfo, _, rest = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    hosts, _, tail = rest.partition("/")
    database, _, query = tail.partition("?")
    params = [f"host={host}" for host in hosts.split(",") if host]
    params += [query] if query else []
    user = f"{userinfo}@" if userinfo else ""
    return f"{scheme}://{user}/{database}?{'&'.join(params)}"


def _try_url(url: str, driver: str, prefix: str) -> dict[str, Any]:
    """Allocate one ID through ``url``; return the ID or where and how it failed."""
    try:
        if driver == "async":

            async def once() -> str:
                engine = idmanager.create_async_engine(url)
                try:
                    return await IdGeneratorUtil.generate_id(prefix, engine)
                finally:
                    await engine.dispose()

            new_id = asyncio.run(once())
        else:
            engine = idmanager.create_engine(url)
            try:
                new_id = IdGeneratorUtil.generate_id(prefix, engine)
            finally:
                engine.dispose()
    except Exception as exc:
        kind, message = describe(exc)
        frames = traceback.extract_tb(exc.__traceback__)
        where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:]]
        return {"ok": False, "error": kind, "message": message, "raised_at": where}
    return {"ok": True, "id": new_id}


def probe_urls() -> dict[str, Any]:
    """Which multi-host URL forms work with which driver, the standby listed first."""
    pair = PgReplicatedPair(synchronous=False)
    results: dict[str, Any] = {}
    try:
        pair.start()
        pair.create_database("probe")
        idmanager.migrate(pair.primary.url("probe"))
        pair.wait_caught_up()
        forms = {
            "query-hosts, read-write": pair.url("probe", standby_first=True),
            "query-hosts, no attrs": pair.url("probe", standby_first=True, attrs=None),
            "libpq-comma, read-write": pair.libpq_url("probe", standby_first=True),
            "libpq-comma, no attrs": pair.libpq_url("probe", standby_first=True, attrs=None),
            "libpq-comma rewritten, read-write": libpq_to_query_hosts(
                pair.libpq_url("probe", standby_first=True)
            ),
            "primary-first query-hosts, no attrs": pair.url("probe", attrs=None),
            "query-hosts, primary": pair.url("probe", standby_first=True, attrs="primary"),
            "query host list + port list, read-write": (
                f"postgresql://postgres@/probe?host=127.0.0.1,127.0.0.1"
                f"&port={pair.standby.port},{pair.primary.port}&target_session_attrs=read-write"
            ),
        }
        for name, url in forms.items():
            for driver in ("sync", "async"):
                key = f"{name} [{'psycopg' if driver == 'sync' else 'asyncpg'}]"
                results[key] = {"url": url, **_try_url(url, driver, "URLS")}
                print(key, json.dumps(results[key])[:300], flush=True)
        results["make_url(libpq-comma)"] = _parse(pair.libpq_url("probe"))
    finally:
        pair.destroy()
    return results


def _parse(url: str) -> dict[str, Any]:
    try:
        parsed = make_url(url)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        return {
            "ok": False,
            "error": describe(exc)[0],
            "message": str(exc),
            "raised_at": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-2:]],
        }
    return {"ok": True, "parsed": repr(parsed)}


PROBES: dict[str, Callable[[float], dict[str, Any]]] = {
    "galera": probe_galera,
    "pg": probe_pg,
    "urls": lambda _seconds: probe_urls(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probes", nargs="+", choices=sorted(PROBES))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "scaling-probe.json"
    )
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["idmanager"] = idmanager.__file__  # which code was measured (a snapshot or the tree)
    for name in args.probes:
        began = time.monotonic()
        results[name] = PROBES[name](args.seconds)
        results[name]["probe_s"] = round(time.monotonic() - began, 1)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"{name}: done in {results[name]['probe_s']} s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
