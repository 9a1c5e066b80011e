"""SQLAlchemy models. Alembic migrations, not ``create_all``, create them in real databases."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TimeStampedModel(Base):
    """The seed's common columns."""

    __abstract__ = True

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()
    )
    created_by: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true())


class IdManagerModel(TimeStampedModel):
    """One sequence per ``(scope, prefix)``; ``last_value`` is the ordinal last issued."""

    __tablename__ = "id_managers"
    __table_args__ = (
        # One index serves every lookup: the unique key leads with scope, then prefix.
        UniqueConstraint("scope", "prefix", name="uq_id_managers_scope_prefix"),
        CheckConstraint("last_value >= 0", name="last_value_not_negative"),
    )

    # On MySQL/MariaDB the migration gives scope and prefix a binary collation: keys are exact.
    scope: Mapped[str] = mapped_column(String(255), nullable=False, server_default="")
    prefix: Mapped[str] = mapped_column(String(255), nullable=False)
    last_value: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    separator: Mapped[str] = mapped_column(String(4), nullable=False, server_default="-")
    letter_width: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="3")
    digit_width: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="4")
    # The period template (INV{YYYY}) that created the sequence: its family in the console.
    template: Mapped[str | None] = mapped_column(String(255))


class IdManagerAuditModel(Base):
    """Every change of a sequence: who, when, what, from, to."""

    __tablename__ = "id_manager_audit"
    __table_args__ = (
        Index("ix_id_manager_audit_sequence", "scope", "prefix", "id"),
        Index("ix_id_manager_audit_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(255), nullable=False)
    prefix: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    old_value: Mapped[int | None] = mapped_column(BigInteger)
    new_value: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()
    )


class IdempotencyModel(Base):
    """The answer given to a request sent with an ``Idempotency-Key``, for its repeats."""

    __tablename__ = "id_manager_idempotency"
    __table_args__ = (
        UniqueConstraint("owner", "idem_key", name="uq_id_manager_idempotency_owner"),
        Index("ix_id_manager_idempotency_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)
    idem_key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.current_timestamp()
    )
