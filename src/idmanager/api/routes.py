"""The ``/api/v1`` routes: thin adapters from HTTP to the use cases."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from ..application.block_cache import BlockCache
from ..application.use_cases import IdManagerUseCases
from ..domain.errors import PrefixNotFoundError
from ..domain.format import IdFormat, IdRange
from ..domain.period import resolve_prefix
from ..settings import Settings
from .deps import (
    AdminUseCases,
    GenerateAccess,
    OnDate,
    ReadAccess,
    Scope,
    UseCases,
    document_date,
)
from .metrics import Metrics
from .schemas import (
    ConfigureRequest,
    IdsResponse,
    ParsedIdResponse,
    PrefixList,
    PrefixStats,
    ResetRequest,
    ResetResponse,
    problem_example,
)

# Databases take a 64-bit OFFSET; no list is anywhere near this long.
MAX_SKIP = 10**12
# Up to this many IDs the body is built at once; above it, streamed a letter block at a time.
STREAM_ABOVE = 10_000

router = APIRouter(prefix="/api/v1")


class _Text(Convertor[str]):
    """Any text, '/' and line breaks included (the ``path`` convertor stops at a newline)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("text", _Text())

PrefixPath = Annotated[
    str,
    Path(
        description="The prefix: letters, digits and underscores (lower case is upper-cased), "
        "or a period template such as INV{YYYY} resolved from `date`.",
        examples=["CUS"],
        # Documented, not enforced here: the domain's checks give the seed's error messages.
        json_schema_extra={"pattern": r"^\s*[A-Za-z0-9_{}]{1,255}\s*$"},
    ),
]

_PROBLEMS: dict[int, dict[str, Any]] = {
    400: problem_example(400, "bad-json", "Malformed JSON", "The body is not valid JSON"),
    401: problem_example(401, "unauthorized", "Unauthorized", "Invalid API key"),
    403: problem_example(
        403, "forbidden", "Forbidden", "This operation needs the 'admin' role; the key has 'read'"
    ),
    404: problem_example(404, "prefix-not-found", "Prefix not found", "Prefix CUS does not exist"),
    409: problem_example(
        409, "prefix-inactive", "Conflict", "Prefix CUS is inactive and issues no new IDs"
    ),
    422: problem_example(
        422,
        "invalid-prefix",
        "Invalid input",
        "Prefix can only contain uppercase letters, numbers, and underscores",
    ),
    503: problem_example(
        503,
        "storage-unavailable",
        "Database unavailable",
        "The database is unavailable or busy; try again shortly.",
    ),
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI documentation of these error responses (plus 401 and 403)."""
    return {status: _PROBLEMS[status] for status in (401, 403, *statuses)}


def _ids_body(ids: IdRange) -> Iterator[bytes]:
    """Yield ``{"prefix", "ids", "count"}`` as JSON, one letter block of IDs at a time."""
    yield b'{"prefix":' + json.dumps(ids.prefix).encode() + b',"ids":['
    for i, chunk in enumerate(ids.chunks()):
        text = json.dumps(chunk, separators=(",", ":"))[1:-1]
        yield (text if i == 0 else "," + text).encode()
    yield b'],"count":' + str(len(ids)).encode() + b"}"


@router.post(
    "/prefixes/{prefix}/ids",
    summary="Allocate IDs",
    status_code=201,
    response_model=IdsResponse,
    responses=problems(404, 409, 422, 503),
    tags=["ids"],
)
async def allocate_ids(
    request: Request,
    prefix: PrefixPath,
    _: GenerateAccess,
    count: Annotated[int, Query(ge=1, description="How many IDs to allocate.")] = 1,
    scope: Scope = "",
    on: OnDate = None,
) -> Response:
    """Allocate the next `count` IDs of a prefix, committed before they are returned."""
    started = time.perf_counter()
    day = document_date(on)
    # The hot route reads the app's state itself: each dependency FastAPI solves costs about
    # a tenth of the throughput of an allocation served from the block cache.
    state = request.app.state
    settings: Settings = state.settings
    metrics: Metrics = state.metrics
    cache: BlockCache | None = state.block_cache
    if cache is not None and count <= min(settings.block_cache_max_count, settings.max_bulk):
        cached = await _from_cache(request, cache, prefix, count, scope, day)
        if cached is not None:
            name = resolve_prefix(prefix, day)
            metrics.allocated(name, count, time.perf_counter() - started)
            metrics.served_from_cache(count)
            body = json.dumps(
                {"prefix": name, "ids": cached, "count": count}, separators=(",", ":")
            )
            return Response(body.encode(), status_code=201, media_type="application/json")
    use_cases: IdManagerUseCases = state.use_cases
    ids = await use_cases.allocate(prefix, count, scope=scope, on=day)
    metrics.allocated(ids.prefix, len(ids), time.perf_counter() - started)
    if len(ids) > STREAM_ABOVE:
        return StreamingResponse(_ids_body(ids), status_code=201, media_type="application/json")
    return Response(b"".join(_ids_body(ids)), status_code=201, media_type="application/json")


async def _from_cache(
    request: Request, cache: BlockCache, prefix: str, count: int, scope: str, on: date | None
) -> list[str] | None:
    """Return IDs from the block cache; None when it closed meanwhile (shutting down)."""
    try:
        if count == 1:
            return [await cache.generate_id(prefix, scope=scope, on=on)]
        return await cache.bulk_generate_ids(prefix, count, scope=scope, on=on)
    except RuntimeError:
        if request.app.state.block_cache is not None:
            raise
        return None  # the database serves the last requests while the tails are handed back


@router.get(
    "/prefixes",
    summary="List prefixes",
    response_model=PrefixList,
    responses=problems(422, 503),
    tags=["prefixes"],
)
async def list_prefixes(
    use_cases: UseCases,
    _: ReadAccess,
    skip: Annotated[int, Query(ge=0, le=MAX_SKIP, description="Sequences to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most sequences to return.")] = 100,
    active_only: Annotated[bool, Query(description="Leave out inactive prefixes.")] = False,
    scope: Annotated[
        str | None, Query(max_length=255, description="Only this scope; all when omitted.")
    ] = None,
) -> PrefixList:
    """List the sequences, ordered by scope and prefix."""
    managers = await use_cases.run(
        lambda s: s.get_all_prefixes(scope=scope, skip=skip, limit=limit, active_only=active_only),
        commit=False,
    )
    items = [PrefixStats.model_validate(m.stats()) for m in managers]
    return PrefixList(items=items, skip=skip, limit=limit)


@router.get(
    "/prefixes/{prefix}",
    summary="Show a prefix",
    response_model=PrefixStats,
    responses=problems(404, 422, 503),
    tags=["prefixes"],
)
async def prefix_stats(
    prefix: PrefixPath, use_cases: UseCases, _: ReadAccess, scope: Scope = "", on: OnDate = None
) -> PrefixStats:
    """Show the state and statistics of one prefix."""
    day = document_date(on)
    stats = await use_cases.run(
        lambda s: s.get_prefix_stats(prefix, scope=scope, on=day), commit=False
    )
    if not stats["exists"]:
        where = f" in scope {scope!r}" if scope else ""
        raise PrefixNotFoundError(f"Prefix {stats['prefix']}{where} does not exist")
    return PrefixStats.model_validate(stats)


@router.put(
    "/prefixes/{prefix}",
    summary="Register or configure a prefix",
    response_model=PrefixStats,
    responses=problems(400, 404, 409, 422, 503),
    tags=["prefixes"],
)
async def configure_prefix(
    prefix: PrefixPath,
    body: ConfigureRequest,
    use_cases: AdminUseCases,
    scope: Scope = "",
    on: OnDate = None,
) -> PrefixStats:
    """Register a prefix, or change its format, state or starting point (admin)."""
    fmt = IdFormat(**body.format.model_dump()) if body.format else None
    day = document_date(on)
    manager = await use_cases.run(
        lambda s: s.configure_prefix(
            prefix,
            scope=scope,
            on=day,
            fmt=fmt,
            is_active=body.is_active,
            latest_id=body.latest_id,
            force=body.force,
        )
    )
    return PrefixStats.model_validate(manager.stats())


@router.post(
    "/prefixes/{prefix}/reset",
    summary="Reset a sequence",
    response_model=ResetResponse,
    responses=problems(400, 404, 409, 422, 503),
    tags=["prefixes"],
)
async def reset_sequence(
    prefix: PrefixPath,
    body: ResetRequest,
    use_cases: AdminUseCases,
    scope: Scope = "",
    on: OnDate = None,
) -> ResetResponse:
    """Make `reset_to` the latest ID; refused (409) backwards unless `force` (admin)."""
    day = document_date(on)
    result = await use_cases.run(
        lambda s: s.reset_sequence(
            prefix, body.reset_to, body.force, scope=scope, on=day, dry_run=body.dry_run
        ),
        commit=not body.dry_run,
    )
    return ResetResponse(**asdict(result))


@router.get(
    "/ids/{id:text}",
    summary="Parse an ID",
    response_model=ParsedIdResponse,
    responses=problems(404, 422, 503),
    tags=["ids"],
)
async def read_id(
    id: Annotated[str, Path(description="The ID to read.", examples=["cus-aab12"])],
    use_cases: UseCases,
    _: ReadAccess,
    scope: Scope = "",
    prefix: Annotated[
        str | None,
        Query(max_length=255, description="The expected prefix (needed without a separator)."),
    ] = None,
) -> ParsedIdResponse:
    """Parse and validate an ID, correcting case, padding and `0000` where unambiguous."""
    parsed = await use_cases.run(lambda s: s.read_id(id, scope=scope, prefix=prefix), commit=False)
    return ParsedIdResponse(**asdict(parsed), corrected=parsed.normalized != id)
