"""Logging in by pasting an API key, and logging out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...domain.errors import NotAuthenticatedError
from ..security import KeyRing, fingerprint
from .access import Posted, Visitor, start_session
from .render import base_path, page
from .route import ConsoleRoute

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _next(request: Request, target: object) -> str:
    """Return where to go after login: a console page, never another site."""
    base = base_path(request)
    if isinstance(target, str) and target.startswith(base + "/") and "//" not in target:
        return target
    return base


@router.get("/login")
async def login_form(
    request: Request, found: Visitor, next: str = "", ended: str = "", out: str = ""
) -> Response:
    """Show the login form (or go straight on when no keys are configured)."""
    if found.open:
        return RedirectResponse(_next(request, next), 303)
    return await page(
        request,
        "login.html",
        found,
        next=_next(request, next),
        ended=bool(ended),
        out=bool(out),
        error=None,
    )


@router.post("/login")
async def login(request: Request, posted: Posted) -> Response:
    """Log in with an API key; the session remembers the key's fingerprint, never the key."""
    found, form = posted
    target = _next(request, form.get("next"))
    if found.open:
        return RedirectResponse(target, 303)
    key = form.get("api_key")
    keys: KeyRing = request.app.state.keys
    try:
        keys.identify(key.strip() if isinstance(key, str) else None)
    except NotAuthenticatedError:
        return await page(
            request,
            "login.html",
            found,
            status=401,
            next=target,
            ended=False,
            out=False,
            error="That key is not one this service knows. Check that you pasted all of it.",
        )
    assert isinstance(key, str)
    start_session(request, fingerprint(key.strip()))
    return RedirectResponse(target, 303)


@router.post("/logout")
async def logout(request: Request, posted: Posted) -> Response:
    """End the session: the cookie is replaced by one that names no key."""
    start_session(request, None)
    return RedirectResponse(base_path(request) + "/login?out=1", 303)
