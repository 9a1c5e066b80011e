"""The rows `make bench` measures, and docs/benchmarks.md and docs/throughput.png made of them."""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "throughput.png"
BUSY = 2.0  # load average above which the figures are suspect on this machine


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    baseline: str = ""
    ratio: float | None = None
    note: str = ""
    series: str = ""
    clients: int | None = None


ROWS: list[Row] = []
NOTES: dict[str, str] = {}
LOAD: list[float] = []
# Sections with a table of their own (title, markdown lines), written after the targets;
# their rows stay out of "All figures", whose ratio column reads as throughput.
SECTIONS: list[tuple[str, list[str]]] = []
OWN_TABLES = {"cpu", "lean", "ladder"}


def record(
    section: str,
    name: str,
    value: float,
    unit: str,
    base: Row | None = None,
    *,
    note: str = "",
    series: str = "",
    clients: int | None = None,
    show: bool = True,
) -> Row:
    """Keep and print one figure, with its ratio to ``base`` (same run) if given."""
    row = Row(section, name, value, unit, note=note, series=series, clients=clients)
    if base is not None:
        row.baseline, row.ratio = base.name, value / base.value
    ROWS.append(row)
    LOAD.append(os.getloadavg()[0])
    if not show:  # the caller prints it its own way
        return row
    ratio = f"{row.ratio:6.2f}x {row.baseline}" if row.ratio is not None else ""
    print(f"  {name:<66} {value:>12,.0f} {unit:<7} {ratio}", flush=True)
    if note:
        print(f"  {'':<66} ({note})", flush=True)
    return row


def start() -> None:
    LOAD.append(os.getloadavg()[0])
    print(f"load average at start: {LOAD[0]:.2f} on {os.cpu_count()} cores")


def find(name: str) -> Row | None:
    return next((row for row in ROWS if row.name == name), None)


def _targets() -> list[str]:
    """Return the issue's targets as table lines: target, measured, met."""
    lines = ["| target | measured | met |", "| --- | --- | --- |"]

    def ratio(target: str, name: str, least: float) -> None:
        row = find(name)
        if row is None or row.ratio is None:
            lines.append(f"| {target} | not measured | |")
            return
        met = "yes" if row.ratio >= least else f"no ({row.ratio / least:.0%} of the target)"
        lines.append(
            f"| {target} | {row.ratio:.2f}x ({row.value:,.0f} vs {row.value / row.ratio:,.0f}) "
            f"| {met} |"
        )

    ratio(
        "own transaction, hot prefix, 32 clients ≥ 0.8x raw asyncpg upsert",
        "library, own transaction, hot prefix, 32 clients",
        0.8,
    )
    for n in (1, 32):
        ratio(
            f"caller's transaction ≥ 0.9x bare SQLAlchemy session ({n} clients)",
            f"library in caller's session, {n} clients",
            0.9,
        )
    bulk = find("library bulk_generate_ids(1,000,000) (ms)")
    if bulk is not None and bulk.ratio is not None:
        met = "yes" if bulk.value <= 150 and bulk.ratio <= 0.2 else "no"
        lines.append(
            f"| bulk of 1,000,000 ≤ 150 ms and ≤ 0.2x naive formatting | {bulk.value:,.0f} ms, "
            f"{bulk.ratio:.2f}x | {met} |"
        )
    cache = find("block cache, asyncio, hot prefix, 1 tasks")
    if cache is not None:
        met = "yes" if cache.value >= 1e6 else f"no ({cache.value / 1e6:.0%} of the target)"
        lines.append(f"| block cache, one process ≥ 1M IDs/s | {cache.value:,.0f} IDs/s | {met} |")
    for workers in ("1 worker", "2 workers"):
        ratio(
            f"HTTP with the block cache ≥ 0.7x the bare endpoint ({workers}, 32 clients)",
            f"HTTP IdManager, block cache, hot prefix, {workers}, 32 clients",
            0.7,
        )
        ratio(
            f"HTTP own transaction ≥ 0.7x the raw statement rate ({workers}, 32 clients)",
            f"HTTP IdManager, own transaction, hot prefix, {workers}, 32 clients",
            0.7,
        )
    return lines


# Issue 15's goals: (goal, row name, least ratio). Each ratio is the row's throughput over
# its baseline's, measured in the same run.
ISSUE_15 = (
    (
        "own transaction, hot prefix, 1 client ≥ 0.9x raw asyncpg upsert",
        "library, own transaction, hot prefix, 1 clients",
        0.9,
    ),
    (
        "own transaction, 100 prefixes, 8 clients ≥ 0.8x raw",
        "library, own transaction, 100 prefixes, 8 clients",
        0.8,
    ),
    (
        "own transaction, 100 prefixes, 32 clients ≥ 0.8x raw",
        "library, own transaction, 100 prefixes, 32 clients",
        0.8,
    ),
    (
        "SQLite own transaction ≥ 0.5x raw sqlite3 (WAL, synchronous NORMAL)",
        "library, own transaction (sync)",
        0.5,
    ),
    (
        "HTTP own transaction, 1 worker, 1 client ≥ 0.7x raw",
        "HTTP IdManager, own transaction, hot prefix, 1 worker, 1 clients",
        0.7,
    ),
    (
        "HTTP own transaction, 1 worker, 32 clients ≥ 0.8x raw",
        "HTTP IdManager, own transaction, hot prefix, 1 worker, 32 clients",
        0.8,
    ),
    (
        "HTTP block cache, 1 worker, 32 clients ≥ 0.8x the bare endpoint",
        "HTTP IdManager, block cache, hot prefix, 1 worker, 32 clients",
        0.8,
    ),
    (
        "HTTP block cache, 2 workers, 32 clients ≥ 0.8x the bare endpoint",
        "HTTP IdManager, block cache, hot prefix, 2 workers, 32 clients",
        0.8,
    ),
    (
        "IdGeneratorUtil.generate_id(p, engine), hot prefix, 1 client ≥ 0.9x raw",
        "asyncpg IdGeneratorUtil.generate_id(p, engine), hot prefix, 1 clients",
        0.9,
    ),
    (
        "IdGeneratorUtil.generate_id(p, engine), 100 prefixes, 8 clients ≥ 0.8x raw",
        "asyncpg IdGeneratorUtil.generate_id(p, engine), 100 prefixes, 8 clients",
        0.8,
    ),
    (
        "IdGeneratorUtil.generate_id(p, sqlite engine) ≥ 0.5x raw sqlite3",
        "sqlite IdGeneratorUtil.generate_id(p, engine), 1 client",
        0.5,
    ),
)


def _issue_15() -> list[str]:
    """Return issue 15's goals as table lines: goal, measured, met."""
    lines = ["| goal | measured | met |", "| --- | --- | --- |"]
    for goal, name, least in ISSUE_15:
        row = find(name)
        if row is None or row.ratio is None:
            lines.append(f"| {goal} | not measured | |")
            continue
        met = "yes" if row.ratio >= least else f"no ({row.ratio / least:.0%} of the goal)"
        lines.append(f"| {goal} | {row.ratio:.2f}x | {met} |")
    orm_commit = find("ORM, 32 transactions with 20 ms of work, number drawn at commit")
    orm_hand = find("ORM, 32 transactions with 20 ms of work, by hand on raw asyncpg, at commit")
    if orm_commit is not None and orm_hand is not None and orm_hand.value:
        ratio = orm_commit.value / orm_hand.value
        met = "yes" if ratio >= 0.85 else f"no ({ratio / 0.85:.0%} of the goal)"
        lines.append(
            f"| ORM numbered at commit ≥ 0.85x the same transaction by hand on asyncpg "
            f"| {ratio:.2f}x | {met} |"
        )
    return lines


def _plot() -> bool:
    """Draw throughput against clients, one line per series; return False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in ROWS:
        if row.series and row.clients is not None:
            series[row.series].append((row.clients, row.value))
    fig, ax = plt.subplots(figsize=(11, 6))
    colors = plt.get_cmap("tab20").colors
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        style = "--" if name.startswith(("raw", "HTTP bare")) else "-"
        marker = "s" if "2 workers" in name else "o"
        ax.plot(
            xs, ys, style, marker=marker, color=colors[i * 2 % 20 + i * 2 // 20 % 2], label=name
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([1, 8, 32], labels=["1", "8", "32"])
    ax.set_xlabel("concurrent clients (tasks, or HTTP connections)")
    ax.set_ylabel("IDs per second (log scale)")
    ax.set_title(f"IdManager throughput, PostgreSQL on {os.cpu_count()} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)
    return True


def write(elapsed: float) -> None:
    """Write docs/benchmarks.md (and the plot) from the rows of this run."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    busiest = max(LOAD)
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}), {when}, in {elapsed / 60:.1f} minutes. Every ratio "
        "compares with a baseline measured in the same run, on the same machine. The benchmark "
        "is not part of `make test` (nor of CI): it asserts nothing and wants a quiet machine.",
        "",
    ]
    # The run loads the machine itself (the HTTP runs keep every core busy): what other
    # processes were doing shows in the load average before it starts.
    if LOAD[0] > BUSY:
        lines += [
            f"**The machine was busy when this run started**: load average {LOAD[0]:.1f} on "
            f"{os.cpu_count()} cores (other processes were running; up to {busiest:.1f} during "
            "the run, its own load included). Absolute figures are low and noisy; the ratios, "
            "whose two sides ran seconds apart, are the better guide.",
            "",
        ]
    else:
        lines += [
            f"Load average when the run started: {LOAD[0]:.1f} on {os.cpu_count()} cores (up "
            f"to {busiest:.1f} during the run, which keeps the cores busy itself).",
            "",
        ]
    lines += ["## Targets", "", *_targets(), ""]
    lines += ["## Issue 15: performance at the limit", "", *_issue_15(), ""]
    for title, section in SECTIONS:
        lines += [f"## {title}", "", *section, ""]
    if _plot():
        lines += ["## Throughput against clients", "", f"![throughput]({PLOT.name})", ""]
    lines += [
        "## Reading the figures",
        "",
        "- One hot prefix is one row: each allocation waits for the lock that the previous "
        "one holds until its commit is on disk. Past a few clients, more clients only queue "
        "(the raw statement is often slower at 32 clients than at 8).",
        "- The block cache takes the database off the path: an ID costs a lock and a list "
        "index in memory, and the HTTP service then runs at nearly the speed of an endpoint "
        "that does nothing.",
        "- HTTP in its own transaction pays, per request, the HTTP stack (the bare endpoint's "
        "cost) plus the library's allocation (SQLAlchemy Core on asyncpg, about twice the CPU "
        "of the raw statement); one worker is CPU-bound well below the database's rate, so run "
        "one worker per core.",
        "- `uvicorn --workers N` on asyncio's own event loop leaves Nagle's algorithm on "
        "(uvicorn issue #3149): about 40 ms per keep-alive request. uvloop (installed with the "
        "server extra) sets TCP_NODELAY itself, and `idmanager.api.serving.run` fixes it for "
        "either loop; the row 'plain uvicorn.run' shows which applies on this machine.",
        "",
        "## All figures",
        "",
        "PostgreSQL runs on loopback with its default settings (fsync on). Clients are asyncio "
        "tasks in one process, or, for HTTP, keep-alive connections of the load generator.",
        "",
    ]
    lines += [f"{note}" for note in NOTES.values()]
    lines += [
        "",
        "| backend | measurement | value | unit | ratio | baseline | notes |",
        "| --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    for row in ROWS:
        if row.section in OWN_TABLES:
            continue
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        cells = [row.section, row.name, f"{row.value:,.0f}", row.unit, ratio, row.baseline]
        lines.append("| " + " | ".join([*cells, row.note]) + " |")
    DOC.write_text("\n".join(lines) + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}" + (f" and {PLOT.relative_to(ROOT)}" if PLOT else ""))
