"""The console's route class: security headers, the session cookie and error pages.

Every console route runs through :class:`ConsoleRoute`, so no page can leave out the
Content-Security-Policy or render an error as JSON: errors become pages in plain words, titled
from the error registry, with no internals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from html import escape
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ...domain.errors import IdManagerError
from ...problems import kind_of
from .access import CsrfRefused, LoginRequired, visit
from .render import base_path, page, wants_partial
from .session import COOKIE, Session
from .state import console_state

logger = logging.getLogger("idmanager.console")

# No inline script or style anywhere: htmx is a file, and so is the CSS.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def secure(response: Response) -> Response:
    """Add the console's security headers to ``response``."""
    response.headers.update(SECURITY_HEADERS)
    return response


class ConsoleRoute(APIRoute):
    """A route that answers with pages, errors included, and keeps the session cookie."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:  # every error becomes a page
                response = await error_response(request, exc)
            session: Session | None = getattr(request.state, "console_session", None)
            if session is not None:
                set_cookie(request, response, session)
            # Pages show live counters and carry CSRF tokens: never from a cache.
            response.headers["Cache-Control"] = "no-store"
            return secure(response)

        return handle


def set_cookie(request: Request, response: Response, session: Session) -> None:
    """Send the session cookie: HttpOnly, SameSite=Strict, Secure over https, expiring."""
    response.set_cookie(
        COOKIE,
        session.cookie,
        max_age=console_state(request).signer.seconds,
        path=base_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def error_response(request: Request, exc: Exception) -> Response:
    """Return the page (or redirect) for an error raised while serving a console route."""
    if isinstance(exc, LoginRequired):
        # Back to the same page after the login: its query too (a scope, the filters).
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query = {"next": here}
        if exc.ended:
            query["ended"] = "1"
        target = base_path(request) + "/login?" + urlencode(query)
        if wants_partial(request):
            # htmx would follow a redirect and swap the login page into a fragment: ask it
            # to load the login page instead.
            return Response(status_code=200, headers={"HX-Redirect": target})
        return RedirectResponse(target, 303)
    if isinstance(exc, CsrfRefused):
        return await error_page(
            request,
            403,
            "Form refused",
            "This form did not carry the security token of your session (it may be from an "
            "older page, another site, or a session that has ended). Nothing was changed. "
            "Reload the page and try again.",
        )
    if isinstance(exc, IdManagerError):
        found = kind_of(exc)
        if found.status >= 500:
            # The cause may name hosts and driver internals: log it, say it plainly.
            logger.warning("console: %s: %s", found.title.lower(), exc)
            return await error_page(request, found.status, found.title, found.example)
        return await error_page(request, found.status, found.title, str(exc))
    if isinstance(exc, RequestValidationError):
        return await error_page(
            request, 422, "Invalid request", "The address has a value the console cannot read."
        )
    if isinstance(exc, HTTPException):
        return await error_page(
            request, exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail)
        )
    logger.error(
        "console: unexpected error on %s %s", request.method, request.url.path, exc_info=exc
    )
    return await error_page(
        request,
        500,
        "Something went wrong",
        "The console hit an unexpected error; it has been logged. Nothing you can fix from "
        "here: try again, or tell whoever runs this service.",
    )


async def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    """Render an error page; the banner still shows, so a database outage is visible.

    For htmx, a fragment with status 200: htmx swaps in only successful answers.
    """
    if wants_partial(request):
        html = f'<p class="error" role="alert">{escape(title)}: {escape(detail)}</p>'
        return HTMLResponse(html)
    try:
        found = await visit(request)
        return await page(request, "error.html", found, status=status, title=title, detail=detail)
    except Exception:  # the page itself failed (a template bug): still no stack trace out
        logger.exception("console: the error page failed")
        return Response(f"{title}: {detail}", status_code=status, media_type="text/plain")
