"""Prometheus metrics, in a registry of the app's own so several apps can share a process."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ..application.block_cache import CacheStats
from ..domain.repository import AsyncTransactions, Transactions

if TYPE_CHECKING:
    from .allocation import CachedAllocator

OTHER = "_other"
# Allocation is one statement: most requests take milliseconds, a lock wait up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metrics."""

    def __init__(self, engine: AsyncEngine | None, *, max_labels: int = 100) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Prefixes with a label of their own: the first ones seen, up to the bound. Whatever
        # callers invent after that is counted under one label, so the page stays small.
        self.max_labels = max_labels
        # What each allocation records: plain numbers, rendered only when Prometheus scrapes
        # (prometheus_client's labelled counter and histogram take locks and look labels up
        # on every call, which cost as much as serving an ID from the block cache).
        self.ids_allocated: dict[str, int] = {}  # by label: the prefix, or _other
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, then +Inf
        self.latency_sum = 0.0
        self.registry.register(_AllocationsCollector(self))
        self.errors = Counter(
            "idmanager_errors",
            "Requests that failed, by error type.",
            ["type"],
            registry=self.registry,
        )
        if engine is not None:
            pool_in_use = Gauge(
                "idmanager_db_pool_checked_out",
                "Database connections currently checked out of the pool.",
                registry=self.registry,
            )
            pool = engine.sync_engine.pool
            # Some pools (SQLite in memory) do not count; report 0 for them.
            pool_in_use.set_function(lambda: float(getattr(pool, "checkedout", lambda: 0)()))

    def watch_block_cache(self, allocator: CachedAllocator) -> None:
        """Export the statistics of the block cache that ``allocator`` serves from."""
        self.registry.register(_BlockCacheCollector(allocator))

    def watch_conflicts(self, transactions: Transactions | AsyncTransactions) -> None:
        """Export how many conflicts ``transactions`` retried (read when Prometheus scrapes)."""
        self.registry.register(_ConflictsCollector(transactions))

    def allocated(self, requested: str, prefix: str, count: int, seconds: float) -> None:
        """Record one successful allocation of ``prefix`` (``requested`` as the caller wrote
        it: a template names its family)."""
        name = requested.strip().upper() if "{" in requested else prefix
        counts = self.ids_allocated
        if name in counts:
            counts[name] += count
        else:
            label = name if len(counts) < self.max_labels else OTHER
            counts[label] = counts.get(label, 0) + count
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _AllocationsCollector:
    """The allocations' counter and latency histogram, rendered from :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self._families({}, [0] * (len(LATENCY_BUCKETS) + 1), 0.0))

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        return self._families(dict(m.ids_allocated), list(m.latency_counts), m.latency_sum)

    @staticmethod
    def _families(counts: dict[str, int], latency: list[int], total: float) -> Iterator[Metric]:
        ids = CounterMetricFamily(
            "idmanager_ids_allocated",
            "IDs allocated, by prefix (a period template counts its periods together; "
            "prefixes past IDMANAGER_METRICS_MAX_PREFIXES count as '_other').",
            labels=["prefix"],
        )
        for label, value in counts.items():
            ids.add_metric([label], value)
        yield ids
        cumulative = list(accumulate(latency))
        bounds = [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # as Histogram writes them
        yield HistogramMetricFamily(
            "idmanager_allocation_duration_seconds",
            "Time to allocate and commit IDs (one request).",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=total,
        )


class _ConflictsCollector:
    """The conflicts the service's own transactions ran again: a count kept by them anyway."""

    def __init__(self, transactions: Transactions | AsyncTransactions) -> None:
        self.transactions = transactions

    def describe(self) -> list[Metric]:
        return [self._family(0)]

    def collect(self) -> Iterator[Metric]:
        yield self._family(self.transactions.conflicts_retried)

    @staticmethod
    def _family(value: int) -> Metric:
        return CounterMetricFamily(
            "idmanager_conflicts_retried",
            "Conflicts with concurrent transactions (deadlocks, serialization or Galera "
            "certification failures) that the service ran its transaction again after.",
            value=value,
        )


class _BlockCacheCollector:
    """The block cache's statistics, read when Prometheus scrapes."""

    def __init__(self, allocator: CachedAllocator) -> None:
        self.allocator = allocator
        # The statistics survive the cache's closing (the last scrape of a stopping server).
        self.stats = allocator.cache.stats if allocator.cache is not None else CacheStats()

    def describe(self) -> list[Metric]:
        return list(self._families(CacheStats(), 0))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.stats, self.allocator.served)

    @staticmethod
    def _families(stats: CacheStats, served: int) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "idmanager_block_cache_blocks_fetched",
            "Blocks of IDs reserved from the database by this process's block cache.",
            value=stats.blocks_fetched,
        )
        yield CounterMetricFamily(
            "idmanager_block_cache_ids_fetched",
            "IDs reserved from the database by the block cache.",
            value=stats.ids_fetched,
        )
        yield CounterMetricFamily(
            "idmanager_block_cache_ids_handed_back",
            "Reserved IDs returned to the sequence at shutdown (nobody had allocated since).",
            value=stats.ids_handed_back,
        )
        yield CounterMetricFamily(
            "idmanager_block_cache_ids_lost",
            "Reserved IDs that could not be handed back at shutdown: gaps in the sequence.",
            value=stats.ids_lost,
        )
        yield GaugeMetricFamily(
            "idmanager_block_cache_ids_reserved",
            "IDs reserved and not yet handed out: the gap a crash would leave now.",
            value=stats.ids_fetched - served - stats.ids_handed_back - stats.ids_lost,
        )
