"""The FastAPI application, built by a factory from settings.

Run it with ``idmanager serve``, or ``uvicorn idmanager.api.app:create_app --factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from ..application.block_cache import BlockCache
from ..application.use_cases import IdManagerUseCases
from ..domain.errors import StorageError
from ..infrastructure.database import async_url, create_async_engine
from ..infrastructure.migrate import migrate
from ..settings import Settings
from . import operations, routes
from .docs import install_docs, install_openapi
from .errors import install_error_handlers
from .limits import BodyLimit
from .logs import configure_logging
from .metrics import Metrics
from .security import KeyRing

logger = logging.getLogger("idmanager.api")

# A database host that does not answer fails a request after this long, not after minutes.
CONNECT_TIMEOUT_S = 10
MIGRATE_RETRY_MAX_S = 30.0

DESCRIPTION = """Human-readable, sequential, never-repeating business IDs (`CUS-AAA0001`).

Every allocation is one SQL statement in its own short transaction, committed before the
response is sent (unless the server runs the opt-in block cache: see `IDMANAGER_BLOCK_CACHE`).
Errors are RFC 9457 problem details (`application/problem+json`).
Send an API key as `Authorization: Bearer <key>`; roles: `read` < `generate` < `admin`.
"""


def build_engine(settings: Settings) -> AsyncEngine:
    """Create the app's one engine, with a bounded wait for locks and connections."""
    backend = async_url(settings.database_url).get_backend_name()
    options: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    if backend != "sqlite":
        options["pool_size"] = settings.pool_size
    if backend == "postgresql":
        connect_args["timeout"] = CONNECT_TIMEOUT_S
        if settings.lock_timeout_ms:
            # A request stuck behind a long transaction fails (503) instead of hanging.
            connect_args["server_settings"] = {"lock_timeout": str(settings.lock_timeout_ms)}
    elif backend in ("mysql", "mariadb"):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if settings.lock_timeout_ms:
            seconds = max(1, math.ceil(settings.lock_timeout_ms / 1000))
            connect_args["init_command"] = f"SET SESSION innodb_lock_wait_timeout = {seconds}"
    if connect_args:
        options["connect_args"] = connect_args
    return create_async_engine(settings.database_url, **options)


async def _migrate_until_done(url: str) -> None:
    """Retry the migrations until the database answers (it may start after the service)."""
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        try:
            await asyncio.to_thread(migrate, url)
        except StorageError as exc:
            logger.warning("migrations still pending: %s", exc)
            delay = min(delay * 2, MIGRATE_RETRY_MAX_S)
        else:
            logger.info("database migrated")
            return


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Migrate the database (if configured), serve, then close the connections."""
    settings: Settings = app.state.settings
    if settings.loopback_only:
        logger.warning(
            "No API keys configured: every request is allowed. Serve on a loopback address "
            "only, or set IDMANAGER_API_KEYS."
        )
    pending: asyncio.Task[None] | None = None
    if settings.migrate_on_start:
        try:
            await asyncio.to_thread(migrate, settings.database_url)
        except StorageError as exc:
            # Serve anyway: /health reports the outage, and the service resumes by itself.
            logger.error("could not migrate the database at start: %s; retrying", exc)
            pending = asyncio.create_task(_migrate_until_done(settings.database_url))
    if settings.block_cache:
        app.state.block_cache = app.state.metrics.block_cache = _block_cache(app)
    try:
        yield
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        await _close_block_cache(app)
        engine: AsyncEngine = app.state.engine
        await engine.dispose()


def _block_cache(app: FastAPI) -> BlockCache:
    """Create the process's block cache; its fetches are ordinary committed allocations."""
    settings: Settings = app.state.settings
    fetches = IdManagerUseCases(
        app.state.engine,
        max_count=settings.block_cache_max_block,
        create_missing=settings.create_missing,
    )
    logger.info(
        "block cache on: up to %d IDs per request served from blocks of %d to %d IDs",
        settings.block_cache_max_count,
        settings.block_cache_min_block,
        settings.block_cache_max_block,
    )
    return BlockCache(
        fetches.run,
        initial_block=settings.block_cache_initial_block,
        min_block=settings.block_cache_min_block,
        max_block=settings.block_cache_max_block,
    )


async def _close_block_cache(app: FastAPI) -> None:
    """Hand back the unused tails of the blocks; new requests go to the database meanwhile."""
    cache: BlockCache | None = app.state.block_cache
    if cache is None:
        return
    app.state.block_cache = None
    try:
        await cache.close()
    except Exception as exc:  # the process is stopping: report, never hang or crash
        logger.error("block cache: could not hand back the unused IDs: %s", exc)
        return
    stats = cache.stats
    logger.info(
        "block cache closed: %d blocks fetched, %d IDs handed back, %d IDs lost (gaps)",
        stats.blocks_fetched,
        stats.ids_handed_back,
        stats.ids_lost,
    )


def _version() -> str:
    try:
        return version("idmanager")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service: one engine, the routes, problem+json errors, offline docs."""
    settings = settings or Settings()
    configure_logging(settings.log_format)
    app = FastAPI(
        title="IdManager",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Operation IDs are the route functions' names: 'allocate_ids', 'reset_sequence', ...
        generate_unique_id_function=lambda route: route.name,
    )
    engine = build_engine(settings)
    app.state.settings = settings
    app.state.engine = engine
    app.state.use_cases = IdManagerUseCases(
        engine, max_count=settings.max_bulk, create_missing=settings.create_missing
    )
    app.state.keys = KeyRing(settings.api_keys)
    app.state.metrics = Metrics(engine, block_cache=settings.block_cache)
    # Created and closed by the lifespan when IDMANAGER_BLOCK_CACHE is on.
    app.state.block_cache = None
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.include_router(routes.router)
    app.include_router(operations.router)
    install_docs(app)
    install_openapi(app, max_bulk=settings.max_bulk)
    return app
