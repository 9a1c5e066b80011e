"""The seed's own ``id_managers`` table, as its application left it: shared by the tests of
``import-legacy`` (in-process and as a subprocess)."""

from __future__ import annotations

import sqlalchemy as sa

# The seed's rows: (prefix, latest_id, is_active). Well-formed ones, the seed's own 3-digit
# IDs, corrupted ones, a health-check leftover, inactive ones.
SEED_ROWS: list[tuple[str, str | None, bool]] = [
    ("INV", "INV-AAC0500", True),
    ("REC", "REC-ZZZ9999", True),
    ("VEN", "VEN-AAA0007", False),
    ("PUR", "PUR-AAA001", True),
    ("CUS", "cus-aab12", True),
    ("SAL", " SAL-AAB0000 ", True),
    ("INVY", "invy-aaa0002 ", False),
    ("WH", "", True),
    ("PKG", None, True),
    ("UOM", "UOM-AAA0000", True),
    ("BAD", "BAD-invalidID", True),
    ("OLD", "OLD-AAA12345", True),
    ("CUS-EU", "CUS-EU-AAA0001", True),
    ("_HEALTH_CHECK_", "_HEALTH_CHECK_-AAA0001", True),
]


def create_seed_table(
    engine: sa.Engine, name: str, rows: list[tuple[str, str | None, bool]]
) -> None:
    """Create the seed's table (its TimeStampedModel columns, a unique prefix) and fill it."""
    metadata = sa.MetaData()
    schema, _, name = name.rpartition(".")
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prefix", sa.String(255), nullable=False, unique=True),
        sa.Column("latest_id", sa.String(255)),
        sa.Column("is_active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("created_by", sa.String(255)),
        schema=schema or None,
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            table.insert(),
            [
                {"prefix": p, "latest_id": latest, "is_active": active, "created_by": "seed"}
                for p, latest, active in rows
            ],
        )
