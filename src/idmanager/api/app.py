"""The FastAPI application, built by a factory from settings.

Run it with ``idmanager serve``, or ``uvicorn idmanager.api.app:create_app --factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from ..application.block_cache import BlockCache
from ..application.options import ServiceOptions
from ..application.use_cases import IdManagerUseCases
from ..compose import connect
from ..domain.errors import IdManagerError, StorageError
from ..infrastructure.database import async_url, create_async_engine
from ..infrastructure.migrate import migrate
from ..settings import Settings
from . import operations, routes
from .allocation import Allocator, CachedAllocator, DatabaseAllocator
from .console import install_console
from .docs import install_docs, install_openapi
from .errors import install_error_handlers
from .guard import Guard
from .limits import BodyLimit
from .logs import configure_logging
from .metrics import Metrics
from .operations import HealthProbe
from .plain import PlainAllocations
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
    engine: AsyncEngine | None = app.state.engine
    if settings.migrate_on_start and engine is not None:
        try:
            await asyncio.to_thread(migrate, settings.database_url)
        except StorageError as exc:
            # Serve anyway: /health reports the outage, and the service resumes by itself.
            logger.error("could not migrate the database at start: %s; retrying", exc)
            pending = asyncio.create_task(_migrate_until_done(settings.database_url))
    app.state.allocator = _allocator(app)
    forgetting = asyncio.create_task(_forget_old_answers(app))
    try:
        yield
    finally:
        forgetting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forgetting
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        allocator: Allocator = app.state.allocator
        await allocator.close()
        if engine is not None:
            await engine.dispose()


async def _forget_old_answers(app: FastAPI) -> None:
    """Delete expired idempotency answers now and then, in small batches.

    Every worker does it; the deletes are short and touch only old rows, so they never hold
    up an allocation, and the table stays as small as one TTL's worth of keyed requests.
    """
    settings: Settings = app.state.settings
    use_cases: IdManagerUseCases = app.state.use_cases
    every = min(settings.idempotency_ttl_s / 10, 300.0)
    while True:
        await asyncio.sleep(every)
        cutoff = datetime.now(UTC) - timedelta(seconds=settings.idempotency_ttl_s)
        try:
            forgotten = await use_cases.forget_answers(cutoff)
        except IdManagerError as exc:  # the database is away: next time
            logger.warning("could not delete expired idempotency answers: %s", exc)
        else:
            if forgotten:
                logger.info("deleted %d expired idempotency answers", forgotten)


def _allocator(app: FastAPI) -> Allocator:
    """Return the allocation strategy the settings ask for."""
    settings: Settings = app.state.settings
    use_cases: IdManagerUseCases = app.state.use_cases
    database = DatabaseAllocator(use_cases)
    if not settings.block_cache:
        return database
    # The cache's fetches are ordinary committed allocations, of up to a block each.
    fetches = use_cases.with_options(max_count=settings.block_cache_max_block)
    logger.info(
        "block cache on: up to %d IDs per request served from blocks of %d to %d IDs",
        settings.block_cache_max_count,
        settings.block_cache_min_block,
        settings.block_cache_max_block,
    )
    cache = BlockCache(
        fetches.run,
        initial_block=settings.block_cache_initial_block,
        min_block=settings.block_cache_min_block,
        max_block=settings.block_cache_max_block,
        max_prefixes=settings.block_cache_max_prefixes,
        idle_after=settings.block_cache_idle_s,
    )
    allocator = CachedAllocator(
        cache,
        database,
        min(settings.block_cache_max_count, settings.max_bulk),
        ttl=settings.idempotency_ttl_s,
    )
    metrics: Metrics = app.state.metrics
    metrics.watch_block_cache(allocator)
    return allocator


def _version() -> str:
    try:
        return version("idmanager")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def create_app(
    settings: Settings | None = None, *, use_cases: IdManagerUseCases | None = None
) -> FastAPI:
    """Build the service: one engine, the routes, problem+json errors, offline docs.

    ``use_cases`` replaces the database the settings name (tests run the app over an
    in-memory fake that way); nothing is then migrated.
    """
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
        # A redirect to the slash-less path would be built from the Host header.
        redirect_slashes=False,
    )
    options = ServiceOptions(
        max_count=settings.max_bulk,
        create_missing=settings.create_missing,
        max_sequences=settings.max_sequences,
        period_window_days=settings.period_window_days,
        fiscal_year_start=settings.fiscal_year_start,
    )
    engine = build_engine(settings) if use_cases is None else None
    app.state.settings = settings
    app.state.engine = engine
    if use_cases is None:
        assert engine is not None
        use_cases = connect(engine, options)
    else:
        use_cases = use_cases.with_options(
            max_count=options.max_count,
            create_missing=options.create_missing,
            max_sequences=options.max_sequences,
            period_window_days=options.period_window_days,
            fiscal_year_start=options.fiscal_year_start,
        )
    app.state.use_cases = use_cases
    app.state.keys = KeyRing(settings.api_keys)
    app.state.metrics = Metrics(engine, max_labels=settings.metrics_max_prefixes)
    app.state.metrics.watch_conflicts(use_cases.transactions)
    app.state.health = HealthProbe(use_cases, settings.health_cache_s)
    # Chosen by the lifespan: the database, or the block cache in front of it.
    app.state.allocator = DatabaseAllocator(app.state.use_cases)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    # Requests from the wrong host, peer or site are refused before anything.
    app.add_middleware(Guard, settings=settings)
    # Outermost: the allocation route's plain requests, answered under the guard's rules.
    app.add_middleware(PlainAllocations, settings=settings)
    app.include_router(routes.router)
    app.include_router(operations.router)
    install_docs(app)
    install_console(app, settings)  # /console, its static files, and / leading there
    install_openapi(app, max_bulk=settings.max_bulk)
    return app
