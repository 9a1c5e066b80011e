"""Reading pages: the list of sequences, one sequence, an ID looked up, the audit trail."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from ...application.results import SequenceStats
from ...application.use_cases import IdManagerUseCases
from ...domain.errors import IdManagerError, InvalidInputError, PrefixNotFoundError
from ...domain.format import MAX_ORDINAL, ParsedId
from ...domain.repository import AuditAction
from . import visible
from .access import Viewer
from .render import base_path, page, partial, wants_partial
from .route import ConsoleRoute

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

PAGE = 50
NOTICES = {
    "registered": "Registered.",
    "configured": "The format is changed.",
    "reset": "The sequence is reset.",
    "activated": "The sequence is active: it issues new IDs again.",
    "deactivated": "The sequence is inactive: it refuses new IDs until activated again.",
}


def _use_cases(request: Request) -> IdManagerUseCases:
    use_cases: IdManagerUseCases = request.app.state.use_cases
    return use_cases


def _active(value: str) -> bool | None:
    return {"active": True, "inactive": False}.get(value)


@router.get("")
async def sequences(
    request: Request,
    found: Viewer,
    search: str = "",
    scope: str = "",
    status: str = "",
    template: str = "",
    skip: int = 0,
) -> Response:
    """List the sequences the caller may see, with filters and pages."""
    skip = max(skip, 0)
    rows = await visible.sequences(
        _use_cases(request),
        found.caller,
        scope=scope.strip() or None,
        active=_active(status),
        search=search.strip() or None,
        template=template.strip() or None,
        skip=skip,
        limit=PAGE + 1,  # one more tells whether a next page exists
    )
    filters = {"search": search, "scope": scope, "status": status, "template": template}
    return await page(
        request,
        "sequences.html",
        found,
        rows=[SequenceStats.of(row) for row in rows[:PAGE]],
        more=len(rows) > PAGE,
        skip=skip,
        page_size=PAGE,
        filters=filters,
    )


@router.get("/")
async def sequences_slash(request: Request) -> Response:
    """Lead ``/console/`` to ``/console`` (a path only: nothing taken from the Host header)."""
    return RedirectResponse(base_path(request), 307)


async def stats_of(request: Request, found: Viewer, prefix: str, scope: str) -> SequenceStats:
    """Return a sequence the caller may see.

    Raises:
        PrefixNotFoundError: it does not exist.
        ForbiddenError: the key may not use its scope.
    """
    scope = found.caller.check_scope(scope)
    stats = await _use_cases(request).run(
        lambda s: s.get_prefix_stats(prefix, scope=scope), commit=False
    )
    if not stats.exists:
        where = f" in scope {scope!r}" if scope else ""
        raise PrefixNotFoundError(f"There is no sequence {stats.prefix}{where}")
    return stats


@router.get("/sequences/{prefix}")
async def sequence(
    request: Request, found: Viewer, prefix: str, scope: str = "", done: str = ""
) -> Response:
    """Show one sequence: its counters in words, its format, its periods and its history."""
    stats = await stats_of(request, found, prefix, scope)
    use_cases = _use_cases(request)
    family = []
    if stats.template:
        template = stats.template
        family = await use_cases.run(
            lambda s: s.get_all_prefixes(scope=stats.scope, template=template, limit=PAGE),
            commit=False,
        )
    history = await use_cases.run(
        lambda s: s.list_audit(scope=stats.scope, prefix=stats.prefix, limit=PAGE),
        commit=False,
    )
    return await page(
        request,
        "sequence.html",
        found,
        stats=stats,
        family=[SequenceStats.of(row) for row in family],
        history=history,
        notice=NOTICES.get(done),
    )


@router.get("/lookup")
async def lookup(request: Request, found: Viewer, id: str = "", scope: str = "") -> Response:
    """Read an ID the way the API does, and say whether it has been issued."""
    parsed: ParsedId | None = None
    stats: SequenceStats | None = None
    error: str | None = None
    if id.strip():
        use_cases = _use_cases(request)
        try:
            # A key bound to one scope looks up there unless told otherwise.
            scope = found.caller.check_scope(scope or found.caller.only_scope or "")
            parsed = await use_cases.run(lambda s: s.read_id(id, scope=scope), commit=False)
            name = parsed.prefix
            stats = await use_cases.run(
                lambda s: s.get_prefix_stats(name, scope=scope), commit=False
            )
        except IdManagerError as exc:
            error = str(exc)
    context: dict[str, Any] = {
        "typed": id,
        "scope": scope,
        "parsed": parsed,
        "stats": stats,
        "error": error,
    }
    if wants_partial(request):
        return partial(request, "_lookup.html", found, **context)
    return await page(request, "lookup.html", found, **context)


@router.get("/audit")
async def audit(
    request: Request,
    found: Viewer,
    scope: str = "",
    prefix: str = "",
    actor: str = "",
    action: str = "",
    since: str = "",
    until: str = "",
    before: Annotated[int | None, Query(ge=1, le=MAX_ORDINAL)] = None,
) -> Response:
    """Show the audit trail, newest first: who changed which sequence, when and how."""
    start, end = day_start(since, "From"), day_start(until, "To")
    entries = await visible.audit(
        _use_cases(request),
        found.caller,
        scope=scope.strip() or None,
        prefix=prefix.strip() or None,
        actor=actor.strip() or None,
        action=action or None,
        since=start,
        # "To" a day includes that day (the calendar's last one: no end at all).
        until=end + timedelta(days=1) if end and end.date() < date.max else None,
        before=before,
        limit=PAGE,
    )
    filters = {
        "scope": scope,
        "prefix": prefix,
        "actor": actor,
        "action": action,
        "since": since,
        "until": until,
    }
    return await page(
        request,
        "audit.html",
        found,
        entries=entries,
        filters=filters,
        actions=[a.value for a in AuditAction],
    )


def day_start(text: str, name: str) -> datetime | None:
    """Return the start (UTC) of a day written YYYY-MM-DD; None when left empty.

    Raises:
        InvalidInputError: not a date.
    """
    if not text.strip():
        return None
    try:
        return datetime.combine(date.fromisoformat(text.strip()), time(), UTC)
    except ValueError:
        raise InvalidInputError(f"{name}: {text!r} is not a date written YYYY-MM-DD") from None
