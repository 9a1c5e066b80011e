"""The only place the benchmarks touch IdManager's internal names.

The package is being refactored: constructors and module paths inside it may move. Everything
else in bench/ uses the public entry points (``IdGeneratorUtil``, ``create_engine``,
``create_async_engine``, ``migrate``, ``idmanager.api.app.create_app``), so when an internal
name moves, this file is the one to update.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

# The library's allocation statement, as its repository builds it (checked against the library
# at start by ``library_upsert``): create the row if missing, add the count, guard the row's
# state and the BIGINT's room, return the whole row.
_COLUMNS = (
    "scope, prefix, last_value, separator, letter_width, digit_width, id, created_at, "
    "updated_at, created_by, is_active"
)
PARAMETERS = (
    "scope",
    "prefix",
    "last_value",
    "separator",
    "letter_width",
    "digit_width",
    "created_by",
    "room",
)


def _by_hand(marks: list[str], is_active: str) -> str:
    s, p, v, sep, lw, dw, by, room = marks
    return (
        "INSERT INTO id_managers (scope, prefix, last_value, separator, letter_width, "
        f"digit_width, created_by) VALUES ({s}, {p}, {v}, {sep}, {lw}, {dw}, {by}) "
        "ON CONFLICT (scope, prefix) DO UPDATE SET last_value = (id_managers.last_value + "
        "excluded.last_value), updated_at = CURRENT_TIMESTAMP "
        f"WHERE {is_active} AND id_managers.last_value <= {room} RETURNING {_COLUMNS}"
    )


_NOTED: set[str] = set()


def _note(why: str) -> None:
    if why not in _NOTED:
        _NOTED.add(why)
        print(f"  (bench/internals.py: {why}; the hand-written upsert stands in)")


def library_upsert(driver: str) -> tuple[str, tuple[str, ...]]:
    """Return the library's allocation statement for ``driver`` and its parameters' order.

    ``driver`` is ``asyncpg`` ($1 placeholders), ``psycopg`` (%(name)s) or ``sqlite`` (?).
    Compiled from the repository's own statement, so the raw baseline runs exactly what the
    library runs; if that internal name has moved, a hand-written copy stands in (and says so).
    """
    dialects: dict[str, Any] = {
        "asyncpg": pg_asyncpg.dialect(),
        "psycopg": pg_psycopg.dialect(),
        "sqlite": sqlite.dialect(),
    }
    try:
        from idmanager.infrastructure.repository import _statement

        statement = _statement("sqlite" if driver == "sqlite" else "postgresql", "allocate")
        compiled = statement.compile(dialect=dialects[driver])
        sql = str(compiled)
        # Only the one-statement upsert is a baseline that creates a missing sequence.
        if sql.startswith("INSERT") and "ON CONFLICT" in sql:
            return sql, tuple(compiled.positiontup or PARAMETERS)
        _note(f"the library's 'allocate' is now {sql.split()[0]} ..., not the upsert")
    except (ImportError, KeyError, AttributeError) as exc:
        _note(f"library statement not found ({exc!r})")
    if driver == "asyncpg":
        return _by_hand([f"${i}" for i in range(1, 9)], "id_managers.is_active"), PARAMETERS
    if driver == "psycopg":
        marks = [f"%({name})s" for name in PARAMETERS]
        return _by_hand(marks, "id_managers.is_active"), PARAMETERS
    return _by_hand(["?"] * 8, "id_managers.is_active = 1"), PARAMETERS


def use_cases(engine: Any) -> Any:
    """Return the library's own-transaction entry point on ``engine`` (async or sync).

    ``idmanager.connect(engine)`` since the refactor; the use cases' own constructors before.
    """
    try:
        from idmanager import connect
    except ImportError:
        connect = None
    if connect is not None:
        return connect(engine)
    from sqlalchemy.ext.asyncio import AsyncEngine

    from idmanager import IdManagerUseCases, SyncIdManagerUseCases

    if isinstance(engine, AsyncEngine):
        return IdManagerUseCases(engine)
    return SyncIdManagerUseCases(engine)


def _key_functions() -> tuple[Any, Any]:
    from idmanager.application.service import check_scope
    from idmanager.domain.period import resolve_prefix

    return check_scope, resolve_prefix


_check_scope, _resolve_prefix = _key_functions()


def sequence_key(prefix: str, scope: str, on: date | None) -> tuple[str, str]:
    """Validate and resolve ``(scope, prefix)`` as the library's service does.

    The lean prototype keeps every input check the library makes; these are its functions.
    """
    name = _resolve_prefix(prefix, on)
    if name == "_HEALTH_CHECK_":
        from idmanager import InvalidPrefixError

        raise InvalidPrefixError("Prefix _HEALTH_CHECK_ is reserved for the health check")
    return _check_scope(scope), name


def library_core_statement(dialect: str) -> Any | None:
    """Return the repository's Core allocation statement (the upsert), or None if it moved."""
    try:
        from idmanager.infrastructure.repository import _statement

        statement = _statement(dialect, "allocate")
    except (ImportError, KeyError, AttributeError):
        return None
    return statement if str(statement.compile()).startswith("INSERT") else None


def route_parameters() -> dict[str, Any]:
    """Return the allocation route's parameter annotations (path, key check, query)."""
    from idmanager.api.deps import GenerateAccess, OnDate, Scope
    from idmanager.api.routes import PrefixPath

    return {
        "PrefixPath": PrefixPath,
        "GenerateAccess": GenerateAccess,
        "Scope": Scope,
        "OnDate": OnDate,
    }


def record_allocation(metrics: Any, prefix: str, count: int, seconds: float) -> None:
    """Record one allocation in the service's metrics as its allocation route does."""
    try:
        metrics.allocated(prefix, prefix, count, seconds)  # (requested, prefix, count, s)
    except TypeError:
        metrics.allocated(prefix, count, seconds)  # before the refactor
