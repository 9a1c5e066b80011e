"""Conflicts the service ran again are counted on /metrics, read from its transactions."""

from __future__ import annotations

from idmanager.api.metrics import Metrics

from .fakes import FakeTransactions


def _value(page: str, name: str) -> float:
    lines = [line for line in page.splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, page
    return float(lines[0].split()[1])


def test_the_conflicts_retried_are_read_from_the_transactions_at_each_scrape() -> None:
    transactions = FakeTransactions()
    metrics = Metrics(None)
    metrics.watch_conflicts(transactions)
    assert _value(metrics.render().decode(), "idmanager_conflicts_retried_total") == 0

    transactions.conflicts_retried = 7
    page = metrics.render().decode()
    assert _value(page, "idmanager_conflicts_retried_total") == 7
    assert "# TYPE idmanager_conflicts_retried_total counter" in page
