"""The ``/api/v1`` routes: thin adapters from HTTP to the use cases."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import State

from ..application.results import AuditPage, ResetResult, SequenceStats, from_json, to_json
from ..application.service import SyncIdManagerService
from ..domain.errors import InvalidInputError, PrefixNotFoundError
from ..domain.format import IdFormat, IdRange
from ..domain.repository import AuditAction, Claim
from ..problems import PROBLEM_JSON, ProblemKind, kind
from ..settings import Settings
from . import idempotency
from .allocation import Allocator
from .deps import (
    Admin,
    AdminUseCases,
    GenerateAccess,
    OnDate,
    ReadAccess,
    Scope,
    UseCases,
    document_date,
)
from .idempotency import IdempotencyKey
from .metrics import Metrics
from .schemas import (
    ConfigureRequest,
    IdsResponse,
    ParsedIdResponse,
    PrefixList,
    Problem,
    ResetRequest,
)
from .security import Principal

T = TypeVar("T")
# A date, or a date and a time, as ISO 8601 writes them: not a number of seconds.
_ISO_TIME = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)


def _moment(text: str | None) -> datetime | None:
    """Read an ISO 8601 time (UTC when it names no zone)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
        # In UTC here: a time at the ends of the calendar may have none (0001-01-01T00:00+01).
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInputError(
            f"Invalid time {text!r}: not a date and time in UTC's range"
        ) from None


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


def problems(*names: str) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI documentation of these kinds of error (plus those of every request:
    a missing or weak key, a Host the service does not answer to)."""
    by_status: dict[int, list[ProblemKind]] = {}
    for name in ("unauthorized", "forbidden", "host-not-allowed", *names):
        found = kind(name)
        by_status.setdefault(found.status, []).append(found)
    return {status: _documented(kinds) for status, kinds in sorted(by_status.items())}


def _documented(kinds: Iterable[ProblemKind]) -> dict[str, Any]:
    kinds = list(kinds)
    examples = {
        found.kind: {
            "summary": found.title,
            "value": {
                "type": found.type,
                "title": found.title,
                "status": found.status,
                "detail": found.example,
            },
        }
        for found in kinds
    }
    return {
        "model": Problem,
        "description": " or ".join(dict.fromkeys(found.title for found in kinds)),
        "content": {PROBLEM_JSON: {"examples": examples}},
    }


_INPUT = ("validation-error", "invalid-prefix", "invalid-scope", "invalid-input")
_STORAGE = ("sequence-busy", "storage-unavailable")
_BODY = ("bad-json", "body-too-large")
# What the service refuses of a change asked by another site's page (api/guard.py).
_CHANGE = ("cross-site-request", "unsupported-media-type")


def _ids_body(prefix: str, chunks: Iterable[Sequence[str]], count: int) -> Iterator[bytes]:
    """Yield ``{"prefix", "ids", "count"}`` as JSON, one letter block of IDs at a time."""
    yield b'{"prefix":' + json.dumps(prefix).encode() + b',"ids":['
    for i, chunk in enumerate(chunks):
        text = json.dumps(chunk, separators=(",", ":"))[1:-1]
        yield (text if i == 0 else "," + text).encode()
    yield b'],"count":' + str(count).encode() + b"}"


async def allocate_ids(
    request: Request,
    prefix: PrefixPath,
    principal: GenerateAccess,
    count: Annotated[int, Query(ge=1, description="How many IDs to allocate.")] = 1,
    scope: Scope = "",
    on: OnDate = None,
) -> Response:
    """Allocate the next `count` IDs of a prefix, committed before they are returned."""
    # Read here, not as a parameter: documented by the route's `openapi_extra`.
    key = request.headers.get(idempotency.HEADER)
    allocation = await allocate(request.app.state, prefix, principal, count, scope, on, key)
    if count > STREAM_ABOVE and isinstance(allocation.ids, IdRange):
        body = _ids_body(allocation.prefix, allocation.ids.chunks(), count)
        return StreamingResponse(
            body, status_code=201, media_type="application/json", headers=allocation.headers()
        )
    return Response(
        allocation.body(), 201, headers=allocation.headers(), media_type="application/json"
    )


# The allocation route's path (api/plain.py matches it by hand).
IDS_PATH = "/prefixes/{prefix}/ids"

router.add_api_route(
    IDS_PATH,
    allocate_ids,
    methods=["POST"],
    summary="Allocate IDs",
    status_code=201,
    response_model=IdsResponse,
    responses=problems(
        *_INPUT,
        *_CHANGE,
        "invalid-count",
        "idempotency-key-reused",
        "prefix-not-found",
        "prefix-inactive",
        "ambiguous-format",
        "sequence-limit",
        "conflict",
        *_STORAGE,
    ),
    tags=["ids"],
    openapi_extra={"parameters": [idempotency.OPENAPI_PARAMETER]},
)


@dataclass(frozen=True, slots=True)
class Allocation:
    """The answer to an allocation: what the route, and the plain path (api/plain.py), send."""

    prefix: str  # resolved: a period template's period filled in
    ids: Sequence[str]
    count: int
    replayed: bool | None  # None: the request had no Idempotency-Key

    def headers(self) -> dict[str, str] | None:
        return None if self.replayed is None else _replayed(self.replayed)

    def body(self) -> bytes:
        """Return ``{"prefix", "ids", "count"}`` as JSON: what :func:`_ids_body` writes.

        Written as it is: a prefix (``[A-Z0-9_]``) and its IDs (the prefix, a separator of
        ``-./:#``, letters, digits) hold nothing JSON escapes.
        """
        text = '{"prefix":"' + self.prefix + '","ids":["' + '","'.join(self.ids) + '"],"count":'
        return (text + str(self.count) + "}").encode()


async def allocate(
    state: State,
    prefix: str,
    principal: Principal,
    count: int,
    scope: str,
    on: str | None,
    key: str | None,
) -> Allocation:
    """Allocate for an authorized caller, with the app's ``state``: the route's work, shared
    with the plain path (which reads the same parameters from the request itself)."""
    started = time.perf_counter()
    settings: Settings = state.settings
    allocator: Allocator = state.allocator
    create = settings.create_missing and principal.may(settings.create_role)
    scope = principal.check_scope(scope)
    day = document_date(on)
    replayed: bool | None = None
    if key is None:
        name, ids = await allocator.allocate(prefix, count, scope, day, principal.actor, create)
    else:
        claim = idempotency.claim(principal, key, "allocate", prefix, count, scope, on)
        assert claim is not None
        once = await allocator.allocate_once(
            prefix, count, scope, day, principal.actor, create, claim
        )
        (name, ids), replayed = once.value, once.replayed
    if not replayed:  # a replay allocated nothing
        metrics: Metrics = state.metrics
        metrics.allocated(prefix, name, count, time.perf_counter() - started)
    return Allocation(name, ids, count, replayed)


def _replayed(replayed: bool) -> dict[str, str]:
    return {idempotency.REPLAYED: "true" if replayed else "false"}


@router.get(
    "/prefixes",
    summary="List prefixes",
    response_model=PrefixList,
    responses=problems("validation-error", "invalid-scope", "invalid-input", *_STORAGE),
    tags=["prefixes"],
)
async def list_prefixes(
    use_cases: UseCases,
    principal: ReadAccess,
    skip: Annotated[int, Query(ge=0, le=MAX_SKIP, description="Sequences to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most sequences to return.")] = 100,
    active_only: Annotated[bool, Query(description="Leave out inactive prefixes.")] = False,
    scope: Annotated[
        str | None, Query(max_length=255, description="Only this scope; all when omitted.")
    ] = None,
    active: Annotated[
        bool | None,
        Query(description="Only active (true) or only inactive (false) prefixes."),
    ] = None,
    search: Annotated[
        str | None, Query(max_length=255, description="Only prefixes containing this text.")
    ] = None,
    template: Annotated[
        str | None,
        Query(max_length=255, description="Only the periods of this template (INV{YYYY})."),
    ] = None,
) -> PrefixList:
    """List the sequences, ordered by scope and prefix."""
    scope = principal.check_scope(scope) if scope is not None else principal.only_scope
    managers = await use_cases.run(
        lambda s: s.get_all_prefixes(
            scope=scope,
            skip=skip,
            limit=limit,
            active_only=active_only,
            active=active,
            search=search,
            template=template,
            scopes=principal.scopes,
        ),
        commit=False,
    )
    items = [SequenceStats.of(m) for m in managers]
    return PrefixList(items=items, skip=skip, limit=limit)


@router.get(
    "/prefixes/{prefix}",
    summary="Show a prefix",
    response_model=SequenceStats,
    responses=problems(*_INPUT, "prefix-not-found", *_STORAGE),
    tags=["prefixes"],
)
async def prefix_stats(
    prefix: PrefixPath,
    use_cases: UseCases,
    principal: ReadAccess,
    scope: Scope = "",
    on: OnDate = None,
) -> SequenceStats:
    """Show the state and statistics of one prefix."""
    principal.check_scope(scope)
    day = document_date(on)
    stats = await use_cases.run(
        lambda s: s.get_prefix_stats(prefix, scope=scope, on=day), commit=False
    )
    if not stats.exists:
        where = f" in scope {scope!r}" if scope else ""
        raise PrefixNotFoundError(f"Prefix {stats.prefix}{where} does not exist")
    return stats


@router.put(
    "/prefixes/{prefix}",
    summary="Register or configure a prefix",
    response_model=SequenceStats,
    responses=problems(
        *_BODY,
        *_CHANGE,
        *_INPUT,
        "invalid-format",
        "invalid-id",
        "format-locked",
        "reset-refused",
        "ambiguous-format",
        "sequence-limit",
        "idempotency-key-reused",
        *_STORAGE,
    ),
    tags=["prefixes"],
)
async def configure_prefix(
    prefix: PrefixPath,
    body: ConfigureRequest,
    admin: AdminUseCases,
    response: Response,
    key: IdempotencyKey = None,
    scope: Scope = "",
    on: OnDate = None,
) -> SequenceStats:
    """Register a prefix, or change its format, state or starting point (admin)."""
    admin.principal.check_scope(scope)
    fmt = IdFormat(**body.format.model_dump()) if body.format else None
    day = document_date(on)

    def configure(s: SyncIdManagerService) -> SequenceStats:
        manager = s.configure_prefix(
            prefix,
            scope=scope,
            on=day,
            fmt=fmt,
            is_active=body.is_active,
            latest_id=body.latest_id,
            force=body.force,
        )
        return SequenceStats.of(manager)

    claim = idempotency.claim(
        admin.principal, key, "configure", prefix, scope, on, body.model_dump_json()
    )
    return await _once(admin, configure, claim, SequenceStats, response)


@router.post(
    "/prefixes/{prefix}/reset",
    summary="Reset a sequence",
    response_model=ResetResult,
    responses=problems(
        *_BODY,
        *_CHANGE,
        *_INPUT,
        "invalid-id",
        "reset-refused",
        "sequence-limit",
        "idempotency-key-reused",
        *_STORAGE,
    ),
    tags=["prefixes"],
)
async def reset_sequence(
    prefix: PrefixPath,
    body: ResetRequest,
    admin: AdminUseCases,
    response: Response,
    key: IdempotencyKey = None,
    scope: Scope = "",
    on: OnDate = None,
) -> ResetResult:
    """Make `reset_to` the latest ID; refused (409) backwards unless `force` (admin)."""
    admin.principal.check_scope(scope)
    day = document_date(on)

    def reset(s: SyncIdManagerService) -> ResetResult:
        return s.reset_sequence(
            prefix, body.reset_to, body.force, scope=scope, on=day, dry_run=body.dry_run
        )

    if body.dry_run:  # changes nothing: nothing to do once only
        return await admin.use_cases.run(reset, commit=False)
    claim = idempotency.claim(
        admin.principal, key, "reset", prefix, scope, on, body.model_dump_json()
    )
    return await _once(admin, reset, claim, ResetResult, response)


async def _once(
    admin: Admin,
    operation: Callable[[SyncIdManagerService], T],
    claim: Claim | None,
    result: type[T],
    response: Response,
) -> T:
    """Run an admin's change, once per idempotency key when it has one."""
    if claim is None:
        return await admin.use_cases.run(operation)
    once = await admin.use_cases.run_once(
        operation,
        claim,
        lambda value: json.dumps(to_json(value)),
        lambda text: from_json(result, json.loads(text)),
    )
    response.headers.update(_replayed(once.replayed))
    return once.value


@router.get(
    "/ids/{id:text}",
    summary="Parse an ID",
    response_model=ParsedIdResponse,
    responses=problems(
        "validation-error", "invalid-id", "invalid-prefix", "invalid-scope", *_STORAGE
    ),
    tags=["ids"],
)
async def read_id(
    id: Annotated[str, Path(description="The ID to read.", examples=["cus-aab12"])],
    use_cases: UseCases,
    principal: ReadAccess,
    scope: Scope = "",
    prefix: Annotated[
        str | None,
        Query(max_length=255, description="The expected prefix (needed without a separator)."),
    ] = None,
) -> ParsedIdResponse:
    """Parse and validate an ID, correcting case, padding and `0000` where unambiguous."""
    principal.check_scope(scope)
    parsed = await use_cases.run(lambda s: s.read_id(id, scope=scope, prefix=prefix), commit=False)
    return ParsedIdResponse(
        prefix=parsed.prefix,
        letters=parsed.letters,
        number=parsed.number,
        ordinal=parsed.ordinal,
        normalized=parsed.normalized,
        corrected=parsed.normalized != id,
    )


@router.get(
    "/audit",
    summary="Read the audit trail",
    response_model=AuditPage,
    responses=problems(
        "validation-error", "invalid-scope", "invalid-prefix", "invalid-input", *_STORAGE
    ),
    tags=["audit"],
)
async def list_audit(
    use_cases: UseCases,
    principal: ReadAccess,
    scope: Annotated[
        str | None, Query(max_length=255, description="Only this scope; all when omitted.")
    ] = None,
    prefix: Annotated[
        str | None, Query(max_length=255, description="Only this prefix's entries.")
    ] = None,
    actor: Annotated[str | None, Query(max_length=255, description="Only this actor's.")] = None,
    action: Annotated[AuditAction | None, Query(description="Only this kind of change.")] = None,
    since: Annotated[
        str | None, Query(pattern=_ISO_TIME, description="From this time on (ISO-8601, UTC).")
    ] = None,
    until: Annotated[
        str | None, Query(pattern=_ISO_TIME, description="Before this time (ISO-8601, UTC).")
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="The next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most entries to return.")] = 100,
) -> AuditPage:
    """List who changed which sequence, when and how; newest first, a page at a time."""
    if scope is not None:
        principal.check_scope(scope)
    return await use_cases.run(
        lambda s: s.list_audit(
            scope=scope,
            scopes=principal.scopes,
            prefix=prefix,
            actor=actor,
            action=action,
            since=_moment(since),
            until=_moment(until),
            before=before,
            limit=limit,
        ),
        commit=False,
    )
