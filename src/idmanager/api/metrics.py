"""Prometheus metrics, in a registry of the app's own so several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

# Allocation is one statement: most requests take milliseconds, a lock wait up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metrics."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ids_allocated = Counter(
            "idmanager_ids_allocated",
            "IDs allocated, by prefix.",
            ["prefix"],
            registry=self.registry,
        )
        self.allocation_latency = Histogram(
            "idmanager_allocation_duration_seconds",
            "Time to allocate and commit IDs (one request).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "idmanager_errors",
            "Requests that failed, by error type.",
            ["type"],
            registry=self.registry,
        )
        pool_in_use = Gauge(
            "idmanager_db_pool_checked_out",
            "Database connections currently checked out of the pool.",
            registry=self.registry,
        )
        pool = engine.sync_engine.pool
        # Some pools (SQLite in memory) do not count; report 0 for them.
        pool_in_use.set_function(lambda: float(getattr(pool, "checkedout", lambda: 0)()))

    def allocated(self, prefix: str, count: int, seconds: float) -> None:
        """Record one successful allocation."""
        self.ids_allocated.labels(prefix).inc(count)
        self.allocation_latency.observe(seconds)

    def render(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)
