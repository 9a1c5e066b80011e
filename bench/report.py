"""The rows `make bench` measures, and docs/benchmarks.md and docs/throughput.png made of them."""

from __future__ import annotations

import os
import platform
import re
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
OWN_TABLES = {"cpu", "ladder", "scale"}


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
    print(f"  {name:<66} {_value(row):>12} {unit:<7} {ratio}", flush=True)
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
# its baseline's, measured in the same run (the raw statement on the bare driver).
ISSUE_15 = (
    (
        "own transaction, hot prefix, 1 client ≥ 0.9x raw asyncpg",
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
        "SQLite own transaction ≥ 0.5x raw sqlite3 upsert (WAL, synchronous NORMAL: the library's)",
        "library, own transaction (sync), WAL, synchronous NORMAL",
        0.5,
    ),
    (
        "SQLite own transaction ≥ 0.5x raw sqlite3 upsert (WAL, synchronous FULL)",
        "library, own transaction (sync), WAL, synchronous FULL",
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
        "ORM numbered at commit ≥ 0.85x the same transaction by hand on asyncpg",
        "ORM, 32 transactions with 20 ms of work, number drawn at commit, vs by hand",
        0.85,
    ),
    (
        "IdGeneratorUtil.generate_id(p, engine), hot prefix, 1 client ≥ 0.9x raw",
        "IdGeneratorUtil.generate_id(p, engine), hot prefix, 1 clients",
        0.9,
    ),
    (
        "IdGeneratorUtil.generate_id(p, engine), 100 prefixes, 8 clients ≥ 0.8x raw",
        "IdGeneratorUtil.generate_id(p, engine), 100 prefixes, 8 clients",
        0.8,
    ),
    (
        "IdGeneratorUtil.generate_id(p, sqlite engine) ≥ 0.5x raw sqlite3 (WAL, NORMAL)",
        "IdGeneratorUtil.generate_id(p, engine), WAL, synchronous NORMAL",
        0.5,
    ),
    (
        "a table of 1,000,000 sequences: allocation ≥ 0.9x as fast as with 10,000 (no slowdown)",
        "scale: 10,000 sequences in use, table of 1,000,000, IDs/s",
        0.9,
    ),
)
# A keyed allocation costs at most this many times an unkeyed one (bench/idempotency.py).
IDEMPOTENCY_GOAL = 1.3

# Each goal's paths in the CPU table (group, path name, configuration): the library's path and
# the raw statement beside it.
CPU_PAIRS = (
    ("asyncpg", "connect(async_engine).allocate(p)", "1 client, hot prefix"),
    ("asyncpg", "connect(async_engine).allocate(p)", "8 clients, 100 prefixes"),
    ("asyncpg", "IdGeneratorUtil.generate_id(p, async_engine)", "1 client, hot prefix"),
    ("asyncpg", "IdGeneratorUtil.generate_id(p, async_engine)", "8 clients, 100 prefixes"),
    ("psycopg", "connect(sync_engine).allocate(p)", "1 client, hot prefix"),
    ("psycopg", "connect(sync_engine).allocate(p)", "8 clients, 100 prefixes"),
    ("caller", "AsyncSession: IdGeneratorUtil.generate_id + commit", "1 client, hot prefix"),
    ("orm", "ORM numbered at commit (idmanager.orm)", "1 client, hot prefix"),
    ("sqlite", "connect(sync_engine).allocate(p)", "1 client, hot prefix"),
    ("sqlite", "IdGeneratorUtil.generate_id(p, sync_engine)", "1 client, hot prefix"),
    ("sqlite", "connect(async_engine).allocate(p) (aiosqlite)", "1 client, hot prefix"),
    ("http", "POST /api/v1/prefixes/{p}/ids, own transaction", "8 clients, 100 prefixes"),
    ("http", "POST /api/v1/prefixes/{p}/ids, block cache", "8 clients, 100 prefixes"),
)


def _issue_15() -> list[str]:
    """Return issue 15's goals as table lines: goal, measured, met."""
    lines = ["| goal | measured (same-run ratio) | met |", "| --- | --- | --- |"]
    for goal, name, least in ISSUE_15:
        row = find(name)
        if row is None or row.ratio is None:
            lines.append(f"| {goal} | not measured | |")
            continue
        met = "yes" if row.ratio >= least else f"no ({row.ratio / least:.0%} of the goal)"
        lines.append(f"| {goal} | {row.ratio:.2f}x{_bound(row)} | {met} |")
    keyed = [
        row
        for row in ROWS
        if row.section == "idempotency" and row.ratio and not row.name.startswith("raw ")
    ]
    for row in keyed:
        cost = 1 / row.ratio if row.ratio else float("inf")
        met = "yes" if cost <= IDEMPOTENCY_GOAL else "no"
        what = row.name.replace(", with an Idempotency-Key", "")
        # Beside it, the database's own: the same two statements, raw, from as many tasks
        # as the row has tasks or clients.
        many = re.search(r"(\d+) (?:tasks|clients)", row.name)
        raw = many and find(
            f"raw asyncpg, the library's statements, hot prefix, {many.group(1)} tasks, "
            "with an Idempotency-Key"
        )
        bound = f" (the raw statements: {1 / raw.ratio:.2f}x)" if raw and raw.ratio else ""
        goal = f"an Idempotency-Key costs ≤ {IDEMPOTENCY_GOAL}x ({what})"
        lines.append(f"| {goal} | {cost:.2f}x{bound} | {met} |")
    if not keyed:
        lines.append(f"| an Idempotency-Key costs ≤ {IDEMPOTENCY_GOAL}x | not measured | |")
    return lines


def _bound(row: Row) -> str:
    """For HTTP at one client, about the most the machine allows: a request is the route's
    own round trip (measured with the block cache: no database) and the statement's, one
    after the other. For the ORM, the most the ORM allows: the same transaction with no
    numbering at all. For the table of a million sequences, how much the raw statement
    itself slows there."""
    if row.name.startswith("scale: 10,000 sequences in use, table of 1,000,000"):
        raw = find(row.name.replace("scale: ", "scale: raw statement, "))
        return f" (the raw statement: {raw.ratio:.2f}x)" if raw and raw.ratio else ""
    if row.name.endswith("number drawn at commit, vs by hand"):
        unnumbered = find(
            row.name.replace("number drawn at commit", "the same ORM transaction with no numbering")
        )
        if unnumbered is None or unnumbered.ratio is None:
            return ""
        busy = _by_hand_as_busy()
        control = (
            f"; by hand, as busy as the numbered ORM: {busy.ratio:.2f}x"
            if busy is not None and busy.ratio is not None
            else ""
        )
        name = row.name.removesuffix(", number drawn at commit, vs by hand")
        own = find(
            f"{name}, CPU per transaction (µs): the numbering's own (numbered minus "
            "unnumbered), idmanager.orm"
        )
        cost = (
            f"; the numbering's own CPU per transaction: {own.value:,.0f} µs, "
            f"{own.ratio:.2f}x the same by hand"
            if own is not None and own.ratio is not None
            else ""
        )
        return (
            f" (the same ORM transaction with no numbering at all: {unnumbered.ratio:.2f}x"
            f"{control}{cost})"
        )
    if not (
        row.name.startswith("HTTP IdManager, own transaction") and row.name.endswith(" 1 clients")
    ):
        return ""
    route = find(row.name.replace("own transaction", "block cache"))
    raw = find(row.baseline)
    if route is None or raw is None:
        return ""
    most = route.value / (route.value + raw.value)
    return f" (the route's round trip with no database and the raw statement's, added: {most:.2f}x)"


def _by_hand_as_busy() -> Row | None:
    """The ORM's control: by hand, spending as much CPU as the numbered ORM transaction."""
    return next((row for row in ROWS if "by hand as busy as the numbered ORM" in row.name), None)


def _cpu_beside_raw() -> list[str]:
    """Return the CPU per allocation of each goal's path beside its raw statement's."""
    lines = [
        "| path | configuration | CPU µs/ID | raw µs/ID (the group's first) | x raw |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for group, name, where in CPU_PAIRS:
        row = find(f"{group}: {name}, {where}")
        if row is None or not row.ratio:
            continue
        raw = row.value / row.ratio
        lines.append(
            f"| {group}: {name} | {where} | {row.value:,.0f} | {raw:,.0f} | {row.ratio:.2f}x |"
        )
    return lines if len(lines) > 2 else []


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


BEGIN = (
    "<!-- The figures below are written by `make bench` (bench/report.py): edit around them. -->"
)
END = "<!-- End of the figures written by `make bench`. -->"


def _value(row: Row) -> str:
    return f"{row.value:,.2f}" if abs(row.value) < 10 else f"{row.value:,.0f}"


def figures(elapsed: float) -> list[str]:
    """Return the figures of this run as markdown: the block `make bench` rewrites."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    busiest = max(LOAD)
    lines = [
        "## The figures of the last run",
        "",
        f"Measured by `make bench` on {platform.node()} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}), {when}, in {elapsed / 60:.1f} minutes. Every ratio "
        "compares with a baseline measured in the same run, on the same machine.",
        "",
    ]
    # The run loads the machine itself (the HTTP runs keep every core busy): what other
    # processes were doing shows in the load average before it starts.
    if LOAD[0] > BUSY:
        lines += [
            f"**The machine was busy when this run started**: load average {LOAD[0]:.1f} on "
            f"{os.cpu_count()} cores (other processes were running; up to {busiest:.1f} during "
            "the run, its own load included). Absolute figures are low and noisy; the ratios, "
            "whose two sides ran seconds apart, and the CPU per allocation are the better "
            "guide.",
            "",
        ]
    else:
        lines += [
            f"Load average when the run started: {LOAD[0]:.1f} on {os.cpu_count()} cores (up "
            f"to {busiest:.1f} during the run, which keeps the cores busy itself).",
            "",
        ]
    lines += ["### Issue 15: performance at the limit", "", *_issue_15(), ""]
    beside = _cpu_beside_raw()
    if beside:
        lines += [
            "### CPU per allocation of each goal's path, beside its raw statement",
            "",
            "µs of CPU of the benchmark process per ID (bench/cpu.py, below): the throughput "
            "ratio of a CPU-bound path is about the inverse of its cost multiple.",
            "",
            *beside,
            "",
        ]
    lines += ["### Earlier targets", "", *_targets(), ""]
    scale = [row for row in ROWS if row.section == "scale"]
    if scale:
        lines += [
            "### Scale",
            "",
            "| measurement | value | unit | ratio |",
            "| --- | ---: | --- | ---: |",
        ]
        for row in scale:
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
            lines.append(f"| {row.name} | {_value(row)} | {row.unit} | {ratio} |")
        lines.append("")
    for title, section in SECTIONS:
        lines += [f"### {title}", "", *section, ""]
    if _plot():
        lines += ["### Throughput against clients", "", f"![throughput]({PLOT.name})", ""]
    lines += [
        "### All figures",
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
        cells = [row.section, row.name, _value(row), row.unit, ratio, row.baseline]
        lines.append("| " + " | ".join([*cells, row.note]) + " |")
    return lines


def write(elapsed: float) -> None:
    """Write this run's figures into docs/benchmarks.md (and the plot), keeping the text
    around them."""
    block = "\n".join([BEGIN, "", *figures(elapsed), "", END])
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}" + (f" and {PLOT.relative_to(ROOT)}" if PLOT else ""))
