"""A session factory with several binds (``binds=``): IdManager's tables on one engine, the
application's on another, as a Session routes them. SQLite files: two databases."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import idmanager
from idmanager import IdGeneratorUtil
from idmanager.infrastructure.models import (
    IdempotencyModel,
    IdManagerAuditModel,
    IdManagerModel,
)


class _AppBase(DeclarativeBase):
    pass


class Order(_AppBase):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(40))


def test_a_session_with_several_binds_allocates_on_idmanagers_engine(tmp_path: Path) -> None:
    ids_url, app_url = f"sqlite:///{tmp_path / 'ids.db'}", f"sqlite:///{tmp_path / 'app.db'}"
    idmanager.migrate(ids_url)
    ids_engine, app_engine = idmanager.create_engine(ids_url), idmanager.create_engine(app_url)
    _AppBase.metadata.create_all(app_engine)
    binds = {model: ids_engine for model in (IdManagerModel, IdManagerAuditModel, IdempotencyModel)}
    factory = sessionmaker(binds={**binds, Order: app_engine})

    # Its own transactions, through the factory.
    assert list(idmanager.connect(factory).allocate("ORD")) == ["ORD-AAA0001"]
    # The caller's transaction: the ID and the order committed together, each in its database.
    with factory() as session:
        number = IdGeneratorUtil.generate_id("ORD", session)
        session.add(Order(number=number))
        session.commit()
    with Session(app_engine) as app, Session(ids_engine) as ids:
        assert app.scalars(select(Order.number)).all() == ["ORD-AAA0002"]
        assert ids.scalar(select(IdManagerModel.last_value)) == 2
    ids_engine.dispose()
    app_engine.dispose()
