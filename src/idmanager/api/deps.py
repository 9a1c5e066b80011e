"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from ..application.service import MAX_SCOPE_LENGTH
from ..application.use_cases import IdManagerUseCases
from ..domain.errors import InvalidInputError
from ..settings import Role
from .metrics import Metrics
from .security import KeyRing, Principal

_bearer = HTTPBearer(
    auto_error=False, description="An API key; its role decides what the request may do."
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _access(needed: Role) -> Callable[[Request, Credentials], Awaitable[Principal]]:
    async def authorize(request: Request, credentials: Credentials) -> Principal:
        keys: KeyRing = request.app.state.keys
        return keys.authorize(credentials.credentials if credentials else None, needed)

    return authorize


def bearer_token(authorization: str | None) -> str | None:
    """Return the bearer token of an ``Authorization`` header as the ``HTTPBearer``
    dependency reads it (for the routes that check a key without solving a dependency)."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


# Async, every one: FastAPI would run a plain ``def`` in a worker thread on every request.
async def _use_cases(request: Request) -> IdManagerUseCases:
    use_cases: IdManagerUseCases = request.app.state.use_cases
    return use_cases


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ReadAccess = Annotated[Principal, Depends(_access(Role.READ))]
GenerateAccess = Annotated[Principal, Depends(_access(Role.GENERATE))]
AdminAccess = Annotated[Principal, Depends(_access(Role.ADMIN))]
UseCases = Annotated[IdManagerUseCases, Depends(_use_cases)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
# The shape of the ``date`` parameter (api/plain.py reads it by the same pattern).
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
Scope = Annotated[
    str,
    Query(
        max_length=MAX_SCOPE_LENGTH, description="The tenant or company; '' (the default) for none."
    ),
]
OnDate = Annotated[
    str | None,
    Query(
        alias="date",
        pattern=DATE_PATTERN,
        description="The document's date (YYYY-MM-DD), for a period template such as "
        "INV{YYYY}; default today (UTC).",
        examples=["2026-12-31"],
    ),
]


def document_date(text: str | None) -> date | None:
    """Read the ``date`` parameter (already shaped YYYY-MM-DD) as a calendar date."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"Invalid date {text!r}: not a calendar date") from None


class Admin:
    """An admin caller and the use cases that name it in the audit trail."""

    def __init__(self, principal: Principal, use_cases: IdManagerUseCases) -> None:
        self.principal = principal
        self.use_cases = use_cases.with_options(actor=principal.actor)


async def _admin(request: Request, principal: AdminAccess) -> Admin:
    return Admin(principal, request.app.state.use_cases)


AdminUseCases = Annotated[Admin, Depends(_admin)]
