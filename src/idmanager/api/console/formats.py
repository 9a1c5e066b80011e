"""Register a prefix or change an unused one's format, with a live preview of its IDs.

The preview is a page fragment: htmx fetches it as the operator types; without JavaScript the
form's "Show preview" button posts the form and the whole page comes back with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...application.results import SequenceStats
from ...application.use_cases import IdManagerUseCases
from ...domain.errors import IdManagerError
from ...domain.format import IdFormat, format_id
from ...domain.period import resolve_prefix
from ...problems import kind_of
from . import words
from .access import PostedByAdmin, Viewer, Visit, require_admin
from .forms import FormatFields, text
from .render import base_path, page, partial, wants_partial
from .route import ConsoleRoute
from .sequences import stats_of

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@dataclass
class Preview:
    """What the form's values would give: the first IDs, or why they cannot be."""

    fields: FormatFields
    resolved: str | None = None
    fmt: IdFormat | None = None
    examples: list[tuple[str, str]] = field(default_factory=list)
    existing: SequenceStats | None = None  # the sequence these values name, if it exists
    next_for_date: str | None = None  # for a template: the ID a document of that date gets
    error: str | None = None

    @property
    def locked(self) -> bool:
        """Return True when the sequence exists and has issued IDs: its format is fixed."""
        return self.existing is not None and self.existing.count_issued > 0


def _today() -> date:
    return datetime.now(UTC).date()


async def preview_of(request: Request, found: Visit, fields: FormatFields) -> Preview:
    """Return the preview of the form's values (a read: nothing is registered)."""
    preview = Preview(fields)
    if not fields.prefix:
        preview.error = "Type a prefix to see its first IDs."
        return preview
    use_cases: IdManagerUseCases = request.app.state.use_cases
    try:
        scope = found.caller.check_scope(fields.scope)
        on = fields.on()
        preview.resolved = resolve_prefix(fields.prefix, on)
        preview.fmt = fields.format()
        stats = await use_cases.run(
            lambda s: s.get_prefix_stats(fields.prefix, scope=scope, on=on), commit=False
        )
    except IdManagerError as exc:
        preview.error = str(exc)
        return preview
    if stats.exists:
        preview.existing = stats
    shown = stats.format if preview.locked else preview.fmt
    preview.examples = words.first_ids(stats.prefix, shown)
    if fields.is_template:
        preview.next_for_date = (
            stats.next_id if preview.locked else format_id(stats.prefix, 1, shown)
        )
    return preview


async def _form(
    request: Request,
    found: Visit,
    fields: FormatFields,
    *,
    existing: SequenceStats | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    preview = await preview_of(request, found, fields)
    return await page(
        request,
        "register.html",
        found,
        status=status,
        fields=fields,
        preview=preview,
        existing=existing,
        separators=words.SEPARATORS,
        error=error,
    )


@router.get("/register")
async def register_form(request: Request, found: Viewer) -> Response:
    """Show the form that registers a prefix (admin)."""
    require_admin(found)
    fields = FormatFields.read(request.query_params, today=_today())
    return await _form(request, found, fields)


@router.get("/register/preview")
async def register_preview(request: Request, found: Viewer) -> Response:
    """Return the preview of a format: the fragment htmx swaps in as the operator types."""
    fields = FormatFields.read(request.query_params, today=_today())
    preview = await preview_of(request, found, fields)
    return partial(request, "_preview.html", found, preview=preview)


@router.get("/sequences/{prefix}/format")
async def format_form(request: Request, found: Viewer, prefix: str, scope: str = "") -> Response:
    """Show an existing sequence's format, changeable while it has issued no ID (admin)."""
    require_admin(found)
    stats = await stats_of(request, found, prefix, scope)
    fields = FormatFields.of(stats.prefix, stats.scope, stats.format, _today())
    return await _form(request, found, fields, existing=stats)


@router.post("/register")
async def register(request: Request, posted: PostedByAdmin) -> Response:
    """Register a prefix with its format, or change an unused one's (admin).

    ``step=preview`` only shows the preview: the no-JavaScript way to see it.
    """
    found, form = posted
    fields = FormatFields.read(form, today=_today())
    if text(form, "step") == "preview":
        if wants_partial(request):
            preview = await preview_of(request, found, fields)
            return partial(request, "_preview.html", found, preview=preview)
        return await _form(request, found, fields)
    use_cases: IdManagerUseCases = request.app.state.use_cases
    caller = found.caller
    try:
        scope = caller.check_scope(fields.scope)
        fmt, on = fields.format(), fields.on()
        manager = await use_cases.with_options(actor=caller.actor).run(
            lambda s: s.configure_prefix(fields.prefix, scope=scope, on=on, fmt=fmt)
        )
    except IdManagerError as exc:
        return await _form(request, found, fields, error=str(exc), status=kind_of(exc).status)
    query = urlencode({k: v for k, v in (("scope", manager.scope), ("done", "registered")) if v})
    target = f"{base_path(request)}/sequences/{manager.prefix}?{query}"
    return RedirectResponse(target, 303)
