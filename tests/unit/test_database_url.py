"""Database URLs: libpq's multi-host form, the default target_session_attrs, what each driver
is handed. No database: the dialects' own connect arguments are compared."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Dialect, make_url

from idmanager.infrastructure.database import sync_url


def _connect_args(url: str, dialect: Dialect) -> dict[str, object]:
    """Return the keyword arguments ``dialect`` would connect to ``url`` with."""
    return dict(dialect.create_connect_args(sync_url(url))[1])


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (
            "postgresql://u:secret@h1:5433,h2:5434/ids",
            {"host": "h1,h2", "port": "5433,5434", "target_session_attrs": "read-write"},
        ),
        # A host without a port gets 5432; the query and the driver are kept.
        (
            "postgresql+asyncpg://u@h1,h2:6000/ids?sslmode=require",
            {
                "sslmode": "require",
                "host": "h1,h2",
                "port": "5432,6000",
                "target_session_attrs": "read-write",
            },
        ),
        (
            "postgresql://u@[::1]:5432,[fe80::2]:5433/ids?target_session_attrs=primary",
            {"target_session_attrs": "primary", "host": "::1,fe80::2", "port": "5432,5433"},
        ),
    ],
)
def test_the_libpq_host_list_becomes_the_query_form(url: str, query: dict[str, str]) -> None:
    parsed = sync_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert parsed.host is None
    assert parsed.database == "ids"
    assert dict(parsed.query) == query


def test_user_and_password_are_kept() -> None:
    parsed = sync_url("postgresql://app:p%40ss:w/rd@db1:5432,db2:5432/ids")
    assert (parsed.username, parsed.password) == ("app", "p@ss:w/rd")


def test_both_drivers_get_every_host_and_port() -> None:
    url = "postgresql://u@h1:5433,h2/ids"
    psycopg = _connect_args(url, PGDialect_psycopg())
    assert (psycopg["host"], psycopg["port"]) == ("h1,h2", "5433,5432")
    assert psycopg["target_session_attrs"] == "read-write"
    asyncpg = _connect_args(url, PGDialect_asyncpg())
    assert (asyncpg["host"], asyncpg["port"]) == (["h1", "h2"], [5433, 5432])
    assert asyncpg["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@/ids?host=h1:5432&host=h2:5433",
        "postgresql://u@/ids?host=h1,h2&port=5432,5433",
    ],
)
def test_several_hosts_in_the_query_default_to_the_primary(url: str) -> None:
    assert sync_url(url).query["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h1:5432/ids",
        "postgresql://u@/ids?host=h1:5432",
        "mysql://u@h1:3306/ids",
        "sqlite:///ids.db",
    ],
)
def test_one_host_is_left_as_it_is(url: str) -> None:
    parsed, given = sync_url(url), make_url(url)
    assert "target_session_attrs" not in parsed.query
    assert (parsed.host, parsed.port, parsed.database, parsed.query) == (
        given.host,
        given.port,
        given.database,
        given.query,
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h1:x,h2/ids",
        "postgresql://u@h1,h2/ids?host=h3",
    ],
)
def test_a_host_list_that_cannot_be_read_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="host"):
        sync_url(url)
