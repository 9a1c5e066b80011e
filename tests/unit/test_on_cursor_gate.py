"""When the allocation in the caller's transaction may skip SQLAlchemy's ``execute``
(``direct.on_cursor``): only when nothing would see the statement there.

In process, on SQLite in memory: the check reads the engine's and the connection's listeners,
wherever they were added, and ``echo``; it must not miss one (a tracer would lose the
allocation), nor build the connection's listeners when SQLAlchemy itself would not look.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event

from idmanager.infrastructure.direct import on_cursor


def _noop(*_args: Any) -> None:
    return None


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    yield engine
    engine.dispose()


def test_a_connection_nobody_watches_runs_on_the_cursor(engine: Engine) -> None:
    with engine.connect() as connection:
        assert on_cursor(connection)


@pytest.mark.parametrize("name", ["before_cursor_execute", "after_cursor_execute"])
def test_an_engine_listener_keeps_sqlalchemy_s_path(engine: Engine, name: str) -> None:
    event.listen(engine, name, _noop)
    with engine.connect() as connection:
        assert not on_cursor(connection)


@pytest.mark.parametrize("name", ["before_cursor_execute", "after_cursor_execute"])
def test_a_listener_on_the_connection_itself_keeps_sqlalchemy_s_path(
    engine: Engine, name: str
) -> None:
    with engine.connect() as connection:
        event.listen(connection, name, _noop)
        assert not on_cursor(connection)


def test_a_listener_on_every_connection_keeps_sqlalchemy_s_path(engine: Engine) -> None:
    event.listen(Connection, "before_cursor_execute", _noop)
    try:
        with engine.connect() as connection:
            assert not on_cursor(connection)
    finally:
        event.remove(Connection, "before_cursor_execute", _noop)
    with engine.connect() as connection:
        assert on_cursor(connection)


def test_an_engine_that_logs_its_statements_keeps_sqlalchemy_s_path(engine: Engine) -> None:
    engine.echo = True
    with engine.connect() as connection:
        assert not on_cursor(connection)


def test_other_listeners_leave_the_cursor_path(engine: Engine) -> None:
    """A listener of something else (a commit) sees nothing of the allocation statement."""
    event.listen(engine, "commit", _noop)
    with engine.connect() as connection:
        assert on_cursor(connection)
