"""Who is looking at the console, what they may do, and the CSRF check of every form.

A visit always has a session: a visitor without a valid cookie gets a fresh one (not logged
in) with the response, so that even the login form carries a CSRF token. With no API keys
configured (loopback-only serving) every visitor acts as the anonymous admin, as on the JSON
API, and forms still need their token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData

from ...domain.errors import ForbiddenError
from ...settings import Role
from ..security import ANONYMOUS, KeyRing, Principal
from .session import COOKIE, CSRF_FIELD, Session
from .state import console_state


class LoginRequired(Exception):
    """The page needs a logged-in key; ``ended`` when the visitor had a session that ended."""

    def __init__(self, ended: bool) -> None:
        super().__init__("login required")
        self.ended = ended


class CsrfRefused(Exception):
    """A form came back without the CSRF token of the visitor's session."""


@dataclass(frozen=True, slots=True)
class Visit:
    """A request to the console: its session, its caller (None before login), its token."""

    session: Session
    principal: Principal | None
    open: bool  # no keys configured: everyone is the anonymous admin
    csrf: str
    ended: bool  # the visitor came with a session that expired, or whose key was removed

    @property
    def may_change(self) -> bool:
        """Return True when the caller may change sequences (the admin role)."""
        return self.principal is not None and self.principal.may(Role.ADMIN)

    @property
    def caller(self) -> Principal:
        """Return the logged-in caller.

        Raises:
            LoginRequired: nobody is logged in.
        """
        if self.principal is None:
            raise LoginRequired(self.ended)
        return self.principal


async def visit(request: Request) -> Visit:
    """Return the visit of ``request``, starting a session when it has no valid one."""
    state = console_state(request)
    now = state.clock()
    cookie = request.cookies.get(COOKIE)
    session = state.signer.read(cookie, now)
    ended = bool(cookie) and session is None
    if session is None:
        session = state.signer.issue(None, now)
        request.state.console_session = session  # the route sets it on the response
    keys: KeyRing = request.app.state.keys
    principal: Principal | None
    if keys.open:
        principal = ANONYMOUS
    elif session.fingerprint:
        principal = keys.by_fingerprint(session.fingerprint)
        ended = principal is None  # its key was removed: the session ends with it
    else:
        principal = None
    return Visit(session, principal, keys.open, state.signer.csrf(session), ended)


def start_session(request: Request, fingerprint: str | None) -> Session:
    """Replace the visitor's session (login, logout): a new cookie, a new CSRF token."""
    state = console_state(request)
    session = state.signer.issue(fingerprint, state.clock())
    request.state.console_session = session
    return session


async def _viewer(request: Request) -> Visit:
    found = await visit(request)
    if found.principal is None:
        raise LoginRequired(found.ended)
    return found


async def _posted(request: Request) -> tuple[Visit, FormData]:
    found = await visit(request)
    form = await request.form()
    if not console_state(request).signer.check_csrf(found.session, form.get(CSRF_FIELD)):
        raise CsrfRefused()
    return found, form


async def _posted_by_admin(
    posted: Annotated[tuple[Visit, FormData], Depends(_posted)],
) -> tuple[Visit, FormData]:
    require_admin(posted[0])  # logged in (LoginRequired) and an admin
    return posted


# Any visitor, logged in or not (the login page).
Visitor = Annotated[Visit, Depends(visit)]
# A logged-in caller, any role.
Viewer = Annotated[Visit, Depends(_viewer)]
# A form posted with its CSRF token, by anyone (login), or by an admin.
Posted = Annotated[tuple[Visit, FormData], Depends(_posted)]
PostedByAdmin = Annotated[tuple[Visit, FormData], Depends(_posted_by_admin)]


def require_admin(found: Visit) -> Principal:
    """Return the caller if it may change sequences.

    Raises:
        ForbiddenError: a read or generate key.
    """
    caller = found.caller
    if not caller.may(Role.ADMIN):
        raise ForbiddenError(
            f"Changing sequences needs an admin key; this key has the '{caller.role}' role"
        )
    return caller
