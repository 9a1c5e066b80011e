"""Importing a seed-era ``id_managers`` table, on every backend.

Each backend gets a seed database of its own (not migrated: it holds the seed's schema, built
here) and imports into the session's migrated database of the same backend, each test in a
scope of its own, so the seed's literal prefixes (CUS, PUR, …) never collide between tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import idmanager
from idmanager import (
    InvalidIdError,
    InvalidInputError,
    PrefixInactiveError,
    ServiceOptions,
    StorageError,
    connect,
)
from idmanager.application import legacy
from idmanager.application.legacy import (
    ImportReport,
    LegacyRow,
    OnCorrupt,
    Status,
    plan_row,
    read_latest,
)
from idmanager.cli.import_legacy import row_line, summary_line
from idmanager.infrastructure.database import sync_url
from idmanager.infrastructure.legacy_source import read_legacy_rows, source_engine
from legacy_seed import SEED_ROWS, create_seed_table


def import_legacy(
    source: sa.Engine,
    target: sa.Engine,
    *,
    table: str = "id_managers",
    actor: str = "import-legacy",
    **options: Any,
) -> ImportReport:
    """Read the seed's table from ``source`` and import it into ``target``, as the CLI does."""
    rows = [LegacyRow(*values) for values in read_legacy_rows(source, table)]
    use_cases = connect(target, ServiceOptions(actor=actor))
    return legacy.import_legacy(rows, use_cases, table=table, **options)


# What each row becomes: (status, the next ID it leaves, or None).
EXPECTED: dict[str, tuple[Status, str | None]] = {
    "INV": (Status.IMPORTED, "INV-AAC0501"),
    "REC": (Status.IMPORTED, "REC-AAAA0001"),
    "VEN": (Status.IMPORTED, "VEN-AAA0008"),
    "PUR": (Status.CORRECTED, "PUR-AAA0002"),
    "CUS": (Status.CORRECTED, "CUS-AAB0013"),
    "SAL": (Status.CORRECTED, "SAL-AAB0001"),
    "INVY": (Status.CORRECTED, "INVY-AAA0003"),
    "WH": (Status.CORRECTED, "WH-AAA0001"),
    "PKG": (Status.IMPORTED, "PKG-AAA0001"),
    "UOM": (Status.CORRECTED, "UOM-AAA0001"),
    "BAD": (Status.REFUSED, None),
    "OLD": (Status.REFUSED, None),
    "CUS-EU": (Status.REFUSED, None),
    "_HEALTH_CHECK_": (Status.SKIPPED, None),
}
CLEAN_ROWS: list[tuple[str, str | None, bool]] = [
    ("CUS", "CUS-AAB0012", True),
    ("PUR", "PUR-AAA0001", False),
]
IMPORTABLE = [p for p, (status, _) in EXPECTED.items() if status not in ("refused", "skipped")]


class Seeds:
    """One seed database per backend, created on first use: tables ``id_managers``, ``legacy``."""

    def __init__(self, databases: Any) -> None:
        self.databases = databases
        self.urls: dict[str, str] = {}

    def url(self, backend: str) -> str:
        if backend not in self.urls:
            url = self.databases.create(backend, migrate=False)
            # Plain SQLAlchemy, no IdManager settings: a database as the seed left it.
            engine = sa.create_engine(sync_url(url))
            try:
                create_seed_table(engine, "id_managers", SEED_ROWS)
                create_seed_table(engine, "legacy", CLEAN_ROWS)
            finally:
                engine.dispose()
            self.urls[backend] = url
        return self.urls[backend]


@pytest.fixture(scope="module")
def seeds(databases: Any) -> Seeds:
    return Seeds(databases)


@pytest.fixture
def source(seeds: Seeds, backend: str) -> Iterator[sa.Engine]:
    engine = source_engine(seeds.url(backend))
    yield engine
    engine.dispose()


@pytest.fixture
def target(url: str) -> Iterator[sa.Engine]:
    engine = idmanager.create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def scope() -> str:
    return f"legacy-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def run_import(source: sa.Engine, target: sa.Engine, scope: str) -> Callable[..., ImportReport]:
    def run(**options: Any) -> ImportReport:
        return import_legacy(source, target, scope=scope, **options)

    return run


def by_prefix(report: ImportReport) -> dict[str, tuple[Status, str | None]]:
    return {row.prefix or str(row.legacy_prefix): (row.status, row.next_id) for row in report.rows}


def state(target: sa.Engine, scope: str) -> dict[str, tuple[int, bool]]:
    """Return every sequence of ``scope``: prefix -> (last_value, is_active)."""
    managers = connect(target).run(
        lambda s: s.get_all_prefixes(scope=scope, limit=1000), commit=False
    )
    return {m.prefix: (m.last_value, m.is_active) for m in managers}


def audit_count(target: sa.Engine, scope: str) -> int:
    with target.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT COUNT(*) FROM id_manager_audit WHERE scope = :scope"),
                {"scope": scope},
            ).scalar_one()
        )


def next_ids(target: sa.Engine, scope: str, prefix: str, count: int) -> list[str]:
    return connect(target).run(lambda s: [s.generate_id(prefix, scope=scope) for _ in range(count)])


# --- planning: pure, no database -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ordinal"),
    [
        ("CUS-AAB0012", 10_011),
        ("cus-aab12", 10_011),
        ("  CUS-AAB00012\n", 10_011),
        ("CUS-AAA001", 1),  # the seed's own 3-digit IDs: the number's value
        ("CUS-AAB0000", 9_999),  # just before AAB0001
        ("CUS-AAA0000", 0),  # just before the first: nothing issued
        ("CUS-AAA0", 0),
        ("", 0),
        ("   ", 0),
        ("CUS-ZZZ9999", 26**3 * 9_999),
    ],
)
def test_read_latest_corrects_the_format(text: str, ordinal: int) -> None:
    assert read_latest(text, "CUS") == ordinal


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CUS-invalidID", "expected letters A-Z then digits"),
        ("CUS-AAA12345", "number 12345 exceeds 9999"),
        ("VEN-AAA0001", "must start with 'CUS-'"),
        ("CUS-AA0001", "expected at least 3 letters"),
        ("CUS-AAA", "expected letters A-Z then digits"),
    ],
)
def test_read_latest_refuses_what_it_cannot_read(text: str, reason: str) -> None:
    with pytest.raises(InvalidIdError, match=reason):
        read_latest(text, "CUS")


def test_plan_row_decides_from_the_row_alone() -> None:
    assert plan_row(LegacyRow("CUS", "CUS-AAB0012")).status is Status.IMPORTED
    corrected = plan_row(LegacyRow(" cus ", "CUS-AAB0012", False))
    assert (corrected.status, corrected.prefix, corrected.ordinal) == (
        Status.CORRECTED,
        "CUS",
        10_011,
    )
    assert plan_row(LegacyRow("CUS", None)).ordinal == 0
    refused = plan_row(LegacyRow("BAD", "BAD-invalidID"))
    assert refused.status is Status.REFUSED and "BAD-invalidID" in str(refused.reason)
    skipped = plan_row(LegacyRow("BAD", "BAD-invalidID"), OnCorrupt.SKIP)
    assert skipped.status is Status.REFUSED
    reset = plan_row(LegacyRow("BAD", "BAD-invalidID"), OnCorrupt.RESET)
    assert (reset.status, reset.ordinal) == (Status.RESET, 0)
    for prefix in ("", None, "CUS-EU", "ÇUS", "X" * 256):
        assert plan_row(LegacyRow(prefix, "X-AAA0001"), OnCorrupt.RESET).status is Status.REFUSED
    assert plan_row(LegacyRow("_health_check_", None)).status is Status.SKIPPED


# --- the import, on every backend ------------------------------------------------------------


def test_import_continues_every_sequence_exactly_after_its_latest_id(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    report = run_import(on_corrupt="skip")
    assert report.written and not report.failed
    assert by_prefix(report) == EXPECTED
    assert report.counts() == {
        "imported": 4,
        "corrected": 6,
        "reset": 0,
        "unchanged": 0,
        "refused": 3,
        "skipped": 1,
    }
    # The next IDs, one by one.
    assert next_ids(target, scope, "CUS", 2) == ["CUS-AAB0013", "CUS-AAB0014"]
    assert next_ids(target, scope, "PUR", 2) == ["PUR-AAA0002", "PUR-AAA0003"]
    assert next_ids(target, scope, "SAL", 2) == ["SAL-AAB0001", "SAL-AAB0002"]
    assert next_ids(target, scope, "INV", 1) == ["INV-AAC0501"]
    assert next_ids(target, scope, "REC", 2) == ["REC-AAAA0001", "REC-AAAA0002"]
    for empty in ("WH", "PKG", "UOM"):
        assert next_ids(target, scope, empty, 1) == [f"{empty}-AAA0001"]
    for inactive in ("VEN", "INVY"):
        with pytest.raises(PrefixInactiveError):
            next_ids(target, scope, inactive, 1)
    sequences = state(target, scope)
    assert sequences["VEN"] == (7, False)
    assert sequences["INVY"] == (2, False)
    # Refused and skipped rows leave nothing behind (the health-check prefix is never listed,
    # so look at the table itself).
    assert set(sequences) == set(IMPORTABLE)
    with target.connect() as connection:
        prefixes = connection.execute(
            sa.text("SELECT prefix FROM id_managers WHERE scope = :scope"), {"scope": scope}
        ).scalars()
        assert set(prefixes) == set(IMPORTABLE)
    # Every sequence the import created is audited once, as imported, with its legacy ID.
    assert audit_count(target, scope) == len(IMPORTABLE)


def test_rerunning_the_import_changes_nothing(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    run_import(on_corrupt="skip")
    before, audited = state(target, scope), audit_count(target, scope)
    again = run_import(on_corrupt="skip")
    assert {p: status for p, (status, _) in by_prefix(again).items()} == {
        p: Status.UNCHANGED if p in IMPORTABLE else status for p, (status, _) in EXPECTED.items()
    }
    assert {p: next_id for p, (_, next_id) in by_prefix(again).items()} == {
        p: next_id for p, (_, next_id) in EXPECTED.items()
    }
    assert state(target, scope) == before
    assert audit_count(target, scope) == audited


def test_a_sequence_already_further_is_never_moved_backwards(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    use_cases = connect(target)
    use_cases.run(lambda s: s.reset_sequence("CUS", "CUS-AAC0001", scope=scope))
    use_cases.run(lambda s: s.reset_sequence("PUR", "PUR-AAA0001", scope=scope))  # equal
    use_cases.run(lambda s: s.reset_sequence("SAL", "SAL-AAA0005", scope=scope))  # behind
    use_cases.run(lambda s: s.generate_id("VEN", scope=scope))  # behind, active
    report = run_import(on_corrupt="skip")
    rows = {row.prefix: row for row in report.rows}
    assert (rows["CUS"].status, rows["CUS"].next_id) == (Status.UNCHANGED, "CUS-AAC0002")
    assert rows["CUS"].reason == "the target is already at CUS-AAC0001"
    assert (rows["PUR"].status, rows["PUR"].next_id) == (Status.UNCHANGED, "PUR-AAA0002")
    assert (rows["SAL"].status, rows["SAL"].next_id) == (Status.CORRECTED, "SAL-AAB0001")
    assert (rows["VEN"].status, rows["VEN"].next_id) == (Status.IMPORTED, "VEN-AAA0008")
    assert next_ids(target, scope, "CUS", 1) == ["CUS-AAC0002"]
    assert state(target, scope)["VEN"] == (7, False)  # moved forward: the legacy state wins


def test_fail_mode_writes_nothing_when_a_row_cannot_be_read(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    report = run_import()  # on_corrupt="fail" is the default
    assert report.failed and not report.written
    assert {row.prefix or row.legacy_prefix for row in report.refused} == {"BAD", "OLD", "CUS-EU"}
    # The report still says what the other rows would have become.
    assert by_prefix(report) == EXPECTED
    assert state(target, scope) == {}
    assert audit_count(target, scope) == 0


def test_fail_mode_imports_a_clean_table(source: sa.Engine, target: sa.Engine, scope: str) -> None:
    report = import_legacy(source, target, table="legacy", scope=scope)
    assert report.written and report.table == "legacy"
    assert [row_line(row) for row in report.rows] == [
        "imported CUS -> next CUS-AAB0013",
        "imported PUR -> next PUR-AAA0002 (inactive)",
    ]
    assert state(target, scope) == {"CUS": (10_011, True), "PUR": (1, False)}


def test_reset_mode_restarts_unreadable_rows_at_the_first_id(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    use_cases = connect(target)
    use_cases.run(lambda s: s.reset_sequence("OLD", "OLD-AAA0042", scope=scope))
    report = run_import(on_corrupt=OnCorrupt.RESET)
    rows = {row.prefix or row.legacy_prefix: row for row in report.rows}
    assert (rows["BAD"].status, rows["BAD"].next_id) == (Status.RESET, "BAD-AAA0001")
    assert "BAD-invalidID" in row_line(rows["BAD"]) and "restarted" in row_line(rows["BAD"])
    # Reset never moves an existing sequence backwards either.
    assert (rows["OLD"].status, rows["OLD"].next_id) == (Status.UNCHANGED, "OLD-AAA0043")
    # A prefix that breaks the rules cannot be restarted: refused, the rest imported.
    assert rows["CUS-EU"].status is Status.REFUSED
    assert report.written
    assert next_ids(target, scope, "BAD", 1) == ["BAD-AAA0001"]
    assert next_ids(target, scope, "CUS", 1) == ["CUS-AAB0013"]


def test_dry_run_reports_the_real_outcome_and_writes_nothing(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    dry = run_import(on_corrupt="skip", dry_run=True)
    assert dry.dry_run and not dry.written
    assert state(target, scope) == {}
    assert audit_count(target, scope) == 0
    real = run_import(on_corrupt="skip")
    assert dry.rows == real.rows
    assert "dry run, nothing written" in summary_line(dry)


def test_another_format_in_the_target_is_refused(
    run_import: Callable[..., ImportReport], target: sa.Engine, scope: str
) -> None:
    connect(target).run(
        lambda s: s.configure_prefix("CUS", scope=scope, fmt=idmanager.IdFormat(digit_width=6))
    )
    report = run_import(on_corrupt="skip")
    cus = next(row for row in report.rows if row.prefix == "CUS")
    assert cus.status is Status.REFUSED and "another format" in str(cus.reason)
    assert state(target, scope)["CUS"] == (0, True)


def test_unreadable_sources_are_clear_errors(
    source: sa.Engine, target: sa.Engine, url: str, tmp_path: Any
) -> None:
    with pytest.raises(InvalidInputError, match="Cannot read the seed's table 'missing'"):
        import_legacy(source, target, table="missing")
    # IdManager's own table is not the seed's.
    with pytest.raises(InvalidInputError, match="IdManager's own table"):
        import_legacy(target, target)
    with pytest.raises(InvalidInputError, match="on_corrupt must be one of"):
        import_legacy(source, target, on_corrupt="ignore")
    with pytest.raises(InvalidInputError, match="Scope can only contain"):
        import_legacy(source, target, scope="a b")


def test_an_unmigrated_target_is_refused(seeds: Seeds, backend: str, databases: Any) -> None:
    source = source_engine(seeds.url(backend))
    target = idmanager.create_engine(databases.create(backend, migrate=False))
    try:
        with pytest.raises(StorageError, match="idmanager migrate"):
            import_legacy(source, target)
    finally:
        source.dispose()
        target.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sqlite_source_is_opened_read_only(seeds: Seeds, backend: str, tmp_path: Any) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(InvalidInputError, match="does not exist"):
        source_engine(f"sqlite:///{missing}")
    assert not missing.exists()
    engine = source_engine(seeds.url(backend))
    try:
        with engine.connect() as connection, pytest.raises(sa.exc.OperationalError):
            connection.execute(sa.text("DELETE FROM legacy"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unreachable_source_is_a_storage_error(target: sa.Engine) -> None:
    source = source_engine("postgresql://nobody@127.0.0.1:1/seed")
    try:
        with pytest.raises(StorageError, match="Source database unavailable"):
            import_legacy(source, target)
    finally:
        source.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_table_qualified_by_its_schema(
    seeds: Seeds, backend: str, source: sa.Engine, target: sa.Engine, scope: str
) -> None:
    schema = f"legacy_{uuid.uuid4().hex[:8]}"
    with source.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    create_seed_table(source, f"{schema}.seed", CLEAN_ROWS)
    report = import_legacy(source, target, table=f"{schema}.seed", scope=scope)
    assert report.written and report.table == f"{schema}.seed"
    assert state(target, scope) == {"CUS": (10_011, True), "PUR": (1, False)}
