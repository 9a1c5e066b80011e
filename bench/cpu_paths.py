"""The allocation paths whose CPU cost bench/cpu.py measures and bench/profiles.py profiles.

Each path is an async context manager that sets up what the path needs (connections,
engines, an app) and yields an ``Op``: a function of the prefix doing one allocation, async or
sync. Paths come in groups, each led by its baseline (the raw statement, or the same work by
hand), so every library figure sits beside the cost it should approach.
"""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite
import asyncpg
import psycopg
from internals import (
    MINIMAL,
    library_statement,
    positional,
    raw_pool,
    statement_values,
    use_cases,
)
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from idmanager import IdGeneratorUtil, create_async_engine, create_engine

SQLITE_PRAGMAS = ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL")


@dataclass(frozen=True)
class Env:
    """Where the paths run: a migrated PostgreSQL database and a migrated SQLite file."""

    pg_url: str  # postgresql://user@host:port/db
    sqlite_path: str
    clients: int = 1  # pool size for the paths that have a pool


@dataclass(frozen=True)
class Op:
    """One allocation of ``prefix``: ``call(prefix)``, a coroutine function if ``is_async``."""

    call: Callable[[str], Any]
    is_async: bool = True


Setup = Callable[[Env], AbstractAsyncContextManager[Op]]


@dataclass(frozen=True)
class Path:
    group: str
    name: str
    setup: Setup
    pg: bool = True  # runs on PostgreSQL (its backend CPU is measured)


# PostgreSQL, own transaction: raw drivers.


@asynccontextmanager
async def raw_asyncpg_minimal(env: Env) -> AsyncIterator[Op]:
    conn = await asyncpg.connect(env.pg_url)
    statement = await conn.prepare(MINIMAL)
    try:
        yield Op(lambda p: statement.fetchrow(p))
    finally:
        await conn.close()


@asynccontextmanager
async def raw_asyncpg(env: Env) -> AsyncIterator[Op]:
    """The library's own statement, prepared once, on one asyncpg connection (autocommit).

    With several clients, through asyncpg's pool without its reset query (the physical
    limit: one round trip per allocation)."""
    sql, order = library_statement("asyncpg")
    args = positional(order)
    if env.clients > 1:
        async with raw_pool(env.pg_url, env.clients) as pool:

            async def pooled(p: str) -> object:
                async with pool.acquire() as conn:
                    return await conn.fetchrow(sql, *args(p))

            yield Op(pooled)
        return
    conn = await asyncpg.connect(env.pg_url)
    statement = await conn.prepare(sql)
    try:
        yield Op(lambda p: statement.fetchrow(*args(p)))
    finally:
        await conn.close()


@asynccontextmanager
async def raw_psycopg(env: Env) -> AsyncIterator[Op]:
    """The library's own statement on one psycopg connection, autocommit, server-prepared."""
    sql, _ = library_statement("psycopg")
    local = threading.local()
    opened: list[psycopg.Connection[Any]] = []

    def one(p: str) -> object:
        cursor = getattr(local, "cursor", None)
        if cursor is None:  # one connection per client thread, as a pool would give
            conn = psycopg.connect(env.pg_url, autocommit=True)
            opened.append(conn)
            cursor = local.cursor = conn.cursor()
        return cursor.execute(sql, statement_values(p), prepare=True).fetchone()

    try:
        yield Op(one, False)
    finally:
        for conn in opened:
            conn.close()


# PostgreSQL, own transaction: the library.


@asynccontextmanager
async def async_engine(env: Env) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(env.pg_url, pool_size=env.clients, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def sync_engine(env: Env) -> AsyncIterator[Engine]:
    engine = create_engine(env.pg_url, pool_size=env.clients, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


@asynccontextmanager
async def util_async_engine(env: Env) -> AsyncIterator[Op]:
    async with async_engine(env) as engine:
        yield Op(lambda p: IdGeneratorUtil.generate_id(p, engine))


@asynccontextmanager
async def use_cases_async(env: Env) -> AsyncIterator[Op]:
    async with async_engine(env) as engine:
        yield Op(use_cases(engine).allocate)


@asynccontextmanager
async def util_sync_engine(env: Env) -> AsyncIterator[Op]:
    async with sync_engine(env) as engine:
        yield Op(lambda p: IdGeneratorUtil.generate_id(p, engine), False)


@asynccontextmanager
async def use_cases_sync(env: Env) -> AsyncIterator[Op]:
    async with sync_engine(env) as engine:
        yield Op(use_cases(engine).allocate, False)


# PostgreSQL, the caller's transaction: BEGIN, the upsert, COMMIT.


@asynccontextmanager
async def raw_asyncpg_transaction(env: Env) -> AsyncIterator[Op]:
    sql, order = library_statement("asyncpg")
    args = positional(order)
    conn = await asyncpg.connect(env.pg_url)
    statement = await conn.prepare(sql)

    async def one(p: str) -> object:
        async with conn.transaction():
            return await statement.fetchrow(*args(p))

    try:
        yield Op(one)
    finally:
        await conn.close()


def _text_upsert() -> Any:
    """The library's statement as text() with named parameters: no compilation of Core."""
    sql, _ = library_statement("psycopg")
    for name in statement_values(""):
        # text() takes ":name"; a "::TYPE" cast right after it would hide the parameter.
        sql = re.sub(rf"%\({name}\)s(::\w+)?", f":{name}", sql)
    return text(sql)


@asynccontextmanager
async def bare_async_session(env: Env) -> AsyncIterator[Op]:
    statement = _text_upsert()
    async with async_engine(env) as engine:

        async def one(p: str) -> object:
            async with AsyncSession(engine) as session:
                row = (await session.execute(statement, statement_values(p))).first()
                await session.commit()
                return row

        yield Op(one)


@asynccontextmanager
async def util_async_session(env: Env) -> AsyncIterator[Op]:
    async with async_engine(env) as engine:

        async def one(p: str) -> object:
            async with AsyncSession(engine) as session:
                value = await IdGeneratorUtil.generate_id(p, session)
                await session.commit()
                return value

        yield Op(one)


@asynccontextmanager
async def bare_sync_session(env: Env) -> AsyncIterator[Op]:
    statement = _text_upsert()
    async with sync_engine(env) as engine:

        def one(p: str) -> object:
            with Session(engine) as session:
                row = session.execute(statement, statement_values(p)).first()
                session.commit()
                return row

        yield Op(one, False)


@asynccontextmanager
async def util_sync_session(env: Env) -> AsyncIterator[Op]:
    async with sync_engine(env) as engine:

        def one(p: str) -> object:
            with Session(engine) as session:
                value = IdGeneratorUtil.generate_id(p, session)
                session.commit()
                return value

        yield Op(one, False)


# PostgreSQL, a document numbered at commit: INSERT the row, allocate, UPDATE its number.


@asynccontextmanager
async def orm_tables(env: Env) -> AsyncIterator[None]:
    import orm  # bench/orm.py: its models, numbered at commit and by hand

    engine = create_engine(env.pg_url)
    orm.Base.metadata.create_all(engine)
    engine.dispose()
    yield


@asynccontextmanager
async def by_hand_asyncpg(env: Env) -> AsyncIterator[Op]:
    """The transaction of bench/orm.py by hand, without its 20 ms of other work."""
    from idmanager import format_id

    async with orm_tables(env):
        conn = await asyncpg.connect(env.pg_url)
        insert = await conn.prepare(
            "INSERT INTO bench_documents_by_hand (number) VALUES (NULL) RETURNING id"
        )
        allocate = await conn.prepare(MINIMAL)
        write = await conn.prepare("UPDATE bench_documents_by_hand SET number = $1 WHERE id = $2")

        async def one(p: str) -> object:
            async with conn.transaction():
                row = await insert.fetchval()
                last = await allocate.fetchval(p)
                await write.fetch(format_id(p, last), row)
                return last

        try:
            yield Op(one)
        finally:
            await conn.close()


@asynccontextmanager
async def orm_sessions(env: Env, numbered: bool) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    from idmanager.orm import install

    async with orm_tables(env), async_engine(env) as engine:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        if numbered:
            install(sessions)
        yield sessions


@asynccontextmanager
async def orm_at_commit(env: Env) -> AsyncIterator[Op]:
    import orm

    async with orm_sessions(env, True) as sessions:

        async def one(_p: str) -> object:
            async with sessions() as session:
                document = orm.DrawnAtCommit()
                session.add(document)
                await session.commit()
                return document.number

        yield Op(one)


@asynccontextmanager
async def orm_by_hand(env: Env) -> AsyncIterator[Op]:
    """The same ORM transaction with the allocation and the UPDATE written by hand."""
    import orm
    from sqlalchemy import update

    from idmanager import format_id

    allocate = text(MINIMAL.replace("$1", ":p"))
    table = orm.ByHand.__table__
    async with orm_sessions(env, False) as sessions:

        async def one(p: str) -> object:
            async with sessions() as session:
                document = orm.ByHand()
                session.add(document)
                await session.flush()
                last = (await session.execute(allocate, {"p": p})).scalar_one()
                number = format_id(p, last)
                await session.execute(
                    update(table).where(table.c.id == document.id).values(number=number)
                )
                await session.commit()
                return number

        yield Op(one)


@asynccontextmanager
async def orm_plain(env: Env) -> AsyncIterator[Op]:
    """The ORM transaction alone: insert a document whose number the caller already has."""
    import orm

    numbers = itertools.count()
    async with orm_sessions(env, False) as sessions:

        async def one(p: str) -> object:
            async with sessions() as session:
                session.add(orm.ByHand(number=f"{p}-{next(numbers)}"))
                await session.commit()
                return None

        yield Op(one)


# SQLite: the raw sqlite3 module at the library's settings, and the library.


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A sqlite3 connection set as idmanager's engines set theirs: WAL, NORMAL, busy wait."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    for pragma in SQLITE_PRAGMAS:
        conn.execute(f"PRAGMA {pragma}")
    return conn


@asynccontextmanager
async def raw_sqlite_minimal(env: Env) -> AsyncIterator[Op]:
    conn = sqlite_connection(env.sqlite_path)
    sql = MINIMAL.replace("$1", "?")
    try:
        yield Op(lambda p: conn.execute(sql, (p,)).fetchall(), False)
    finally:
        conn.close()


@asynccontextmanager
async def raw_sqlite(env: Env) -> AsyncIterator[Op]:
    conn = sqlite_connection(env.sqlite_path)
    sql, order = library_statement("sqlite")
    args = positional(order)
    try:
        yield Op(lambda p: conn.execute(sql, args(p)).fetchall(), False)
    finally:
        conn.close()


@asynccontextmanager
async def sqlite_engine(env: Env) -> AsyncIterator[Engine]:
    engine = create_engine(f"sqlite:///{env.sqlite_path}")
    try:
        yield engine
    finally:
        engine.dispose()


@asynccontextmanager
async def sqlite_async_engine(env: Env) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite:///{env.sqlite_path}")
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def util_sqlite(env: Env) -> AsyncIterator[Op]:
    async with sqlite_engine(env) as engine:
        yield Op(lambda p: IdGeneratorUtil.generate_id(p, engine), False)


@asynccontextmanager
async def use_cases_sqlite(env: Env) -> AsyncIterator[Op]:
    async with sqlite_engine(env) as engine:
        yield Op(use_cases(engine).allocate, False)


@asynccontextmanager
async def raw_aiosqlite(env: Env) -> AsyncIterator[Op]:
    """The library's statement on aiosqlite: one hop to its worker thread per call."""
    sql, order = library_statement("sqlite")
    args = positional(order)
    conn = await aiosqlite.connect(env.sqlite_path, isolation_level=None, timeout=30)
    for pragma in SQLITE_PRAGMAS:
        await conn.execute(f"PRAGMA {pragma}")
    try:
        yield Op(lambda p: conn.execute_fetchall(sql, args(p)))
    finally:
        await conn.close()


@asynccontextmanager
async def use_cases_aiosqlite(env: Env) -> AsyncIterator[Op]:
    async with sqlite_async_engine(env) as engine:
        yield Op(use_cases(engine).allocate)


@asynccontextmanager
async def util_aiosqlite(env: Env) -> AsyncIterator[Op]:
    async with sqlite_async_engine(env) as engine:
        yield Op(lambda p: IdGeneratorUtil.generate_id(p, engine))


# HTTP, in process: the ASGI app called directly (no server, no client library).

API_KEY = "bench-key-0123456789abcdef"


@asynccontextmanager
async def http_app(env: Env, block_cache: bool, ladder: bool = False) -> AsyncIterator[Any]:
    """The service's app plus a bare endpoint (bench/http_app.py), lifespan running.

    With ``ladder``, the routes of bench/http_ladder.py too.
    """
    settings = {
        "IDMANAGER_DATABASE_URL": env.pg_url,
        "IDMANAGER_API_KEYS": f"{API_KEY}:generate",
        "IDMANAGER_MIGRATE_ON_START": "false",
        "IDMANAGER_BLOCK_CACHE": "true" if block_cache else "false",
        "IDMANAGER_POOL_SIZE": str(max(env.clients, 1)),
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        import http_app as bench_app

        app = bench_app.create_bench_app()
        if ladder:
            import http_ladder

            http_ladder.add_routes(app)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    async with app.router.lifespan_context(app):
        yield app


def asgi_post(app: Any, path: str) -> Callable[[], Awaitable[int]]:
    """Return a function POSTing ``path`` to the ASGI ``app``; it returns the status."""
    headers = [
        (b"host", b"127.0.0.1:8000"),  # the service refuses Host names it does not serve
        (b"authorization", f"Bearer {API_KEY}".encode()),
        (b"content-length", b"0"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def post() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope, state={}), receive, send)
        if status != 201:
            raise RuntimeError(f"POST {path}: status {status}")
        return status

    return post


def route(path: str, *, block_cache: bool = False, ladder: bool = False) -> Setup:
    """Return a path POSTing ``path`` (``{p}``: the prefix) to the in-process app."""

    @asynccontextmanager
    async def setup(env: Env) -> AsyncIterator[Op]:
        async with http_app(env, block_cache, ladder) as app:
            posts: dict[str, Callable[[], Awaitable[int]]] = {}

            def one(p: str) -> Awaitable[int]:
                post = posts.get(p)
                if post is None:
                    post = posts[p] = asgi_post(app, path.format(p=p))
                return post()

            yield Op(one)

    return setup


ROUTE = "/api/v1/prefixes/{p}/ids"


PATHS: tuple[Path, ...] = (
    Path("asyncpg", "raw asyncpg, the library's statement, prepared", raw_asyncpg),
    Path("asyncpg", "raw asyncpg, the issue's upsert (RETURNING last_value)", raw_asyncpg_minimal),
    Path("asyncpg", "IdGeneratorUtil.generate_id(p, async_engine)", util_async_engine),
    Path("asyncpg", "connect(async_engine).allocate(p)", use_cases_async),
    Path("psycopg", "raw psycopg, the library's statement, prepared", raw_psycopg),
    Path("psycopg", "IdGeneratorUtil.generate_id(p, sync_engine)", util_sync_engine),
    Path("psycopg", "connect(sync_engine).allocate(p)", use_cases_sync),
    Path("caller", "raw asyncpg BEGIN; the statement; COMMIT", raw_asyncpg_transaction),
    Path("caller", "bare AsyncSession: text() statement + commit", bare_async_session),
    Path("caller", "AsyncSession: IdGeneratorUtil.generate_id + commit", util_async_session),
    Path("caller", "bare Session (psycopg): text() statement + commit", bare_sync_session),
    Path("caller", "Session (psycopg): IdGeneratorUtil.generate_id + commit", util_sync_session),
    Path("orm", "by hand on asyncpg: INSERT, upsert, UPDATE in a transaction", by_hand_asyncpg),
    Path("orm", "ORM insert + commit, number given (no numbering)", orm_plain),
    Path("orm", "ORM insert, upsert and UPDATE by hand in the session", orm_by_hand),
    Path("orm", "ORM numbered at commit (idmanager.orm)", orm_at_commit),
    Path("sqlite", "raw sqlite3, the library's statement, WAL, NORMAL", raw_sqlite, False),
    Path("sqlite", "raw sqlite3, the issue's upsert, WAL, NORMAL", raw_sqlite_minimal, False),
    Path("sqlite", "IdGeneratorUtil.generate_id(p, sync_engine)", util_sqlite, False),
    Path("sqlite", "connect(sync_engine).allocate(p)", use_cases_sqlite, False),
    Path("sqlite", "raw aiosqlite, the library's statement (a thread hop)", raw_aiosqlite, False),
    Path(
        "sqlite", "IdGeneratorUtil.generate_id(p, async_engine) (aiosqlite)", util_aiosqlite, False
    ),
    Path("sqlite", "connect(async_engine).allocate(p) (aiosqlite)", use_cases_aiosqlite, False),
    Path("http", "bare FastAPI endpoint, same app (ASGI in process)", route("/bare/{p}/ids")),
    Path("http", "POST /api/v1/prefixes/{p}/ids, own transaction", route(ROUTE)),
    Path("http", "POST /api/v1/prefixes/{p}/ids, block cache", route(ROUTE, block_cache=True)),
)
