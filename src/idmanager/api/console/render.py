"""Pages from templates: the shared context (banner, caller, CSRF token, links) and partials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse

from ...application.results import HealthReport
from ...domain.errors import IdManagerError
from ...infrastructure.database import async_url
from ...settings import Settings
from ..operations import HealthProbe
from . import words
from .access import Visit
from .session import CSRF_FIELD
from .state import console_state

_DATABASES = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL/MariaDB"}


@dataclass(frozen=True, slots=True)
class Banner:
    """The strip on top of every page: is the service well, on what, and in which version."""

    healthy: bool
    health: str
    database: str
    version: str
    gaps_possible: bool


def base_path(request: Request) -> str:
    """Return the console's path: links are built from it, never from the Host header."""
    return str(request.scope.get("root_path", "")) + "/console"


def link(base: str, path: str = "", **query: object) -> str:
    """Return a console link, leaving out empty query values."""
    kept = {k: v for k, v in query.items() if v not in (None, "", False)}
    return base + path + ("?" + urlencode(kept) if kept else "")


def database_kind(url: str) -> str:
    """Return the name of the database the URL points to, for people."""
    try:
        backend = async_url(url).get_backend_name()
    except Exception:  # a URL the engine already accepted; never fail a page on its name
        return "unknown"
    return _DATABASES.get(backend, backend)


async def health(request: Request) -> HealthReport:
    """Return the app's own health report: the probe ``/health`` shares, at most one a second."""
    probe: HealthProbe = request.app.state.health
    try:
        return await probe.report()
    except IdManagerError as exc:  # the database could not even be asked
        return HealthReport("unhealthy", str(exc), "", error_type=type(exc).__name__)


async def banner(request: Request) -> Banner:
    """Return the banner of the app serving ``request``."""
    settings: Settings = request.app.state.settings
    report = await health(request)
    text = (
        "healthy"
        if report.healthy
        else "unhealthy: the database cannot be reached or failed; changes and new IDs "
        "will fail until it is back"
    )
    return Banner(
        report.healthy,
        text,
        database_kind(settings.database_url),
        str(request.app.version),
        settings.block_cache,
    )


def _render(request: Request, template: str, found: Visit | None, **context: Any) -> str:
    base = base_path(request)
    return (
        console_state(request)
        .env.get_template(template)
        .render(
            base=base,
            link=lambda path="", **query: link(base, path, **query),
            visit=found,
            csrf_field=CSRF_FIELD,
            words=words,
            **context,
        )
    )


async def page(
    request: Request,
    template: str,
    found: Visit | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a whole page: ``template`` in the layout, with the banner and the caller."""
    # The banner only for a logged-in caller: a stranger learns nothing and probes nothing.
    shown = await banner(request) if found and found.principal else None
    html = _render(request, template, found, banner=shown, **context)
    return HTMLResponse(html, status_code=status)


def partial(request: Request, template: str, found: Visit, **context: Any) -> HTMLResponse:
    """Render a fragment for htmx (a preview, a dry run): no layout, no banner.

    Always 200: htmx swaps in only successful answers, and a fragment says what went wrong.
    """
    return HTMLResponse(_render(request, template, found, **context))


def wants_partial(request: Request) -> bool:
    """Return True for an htmx request (which swaps a fragment into the page)."""
    return request.headers.get("HX-Request") == "true"
