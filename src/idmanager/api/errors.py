"""Errors as RFC 9457 problem details: the one place where an error becomes a status code."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from ..domain.errors import IdManagerError
from ..problems import DOMAIN_PROBLEMS, PROBLEM_JSON, TYPE_PREFIX

logger = logging.getLogger("idmanager.api")

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
STORAGE_DETAIL = "The database is unavailable or busy; try again shortly."


class AuthError(Exception):
    """A request without the right to do what it asks (401 or 403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def problem(
    request: Request,
    status: int,
    title: str,
    detail: str | None,
    kind: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Return a problem+json response."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": _instance(request),
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _instance(request: Request) -> str:
    # The path as sent, still percent-encoded: a URI reference even for hostile paths.
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path


def _count(request: Request, error_type: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(error_type).inc()


async def domain_error(request: Request, exc: Exception) -> Response:
    """Render an ``IdManagerError``, choosing its status code from its class."""
    _count(request, type(exc).__name__)
    found = next((entry for entry in DOMAIN_PROBLEMS if isinstance(exc, entry[0])), None)
    if found is None:
        return await internal_error(request, exc)
    _, status, kind, title = found
    if status == 503:
        # The cause names hosts and driver internals: log it, answer plainly.
        logger.warning("database unavailable: %s", exc)
        return problem(request, status, title, STORAGE_DETAIL, kind, headers={"Retry-After": "1"})
    return problem(request, status, title, str(exc), kind)


async def auth_error(request: Request, exc: Exception) -> Response:
    """Render a refused credential: 401 asks for a bearer token, 403 names the missing role."""
    assert isinstance(exc, AuthError)
    _count(request, "AuthError")
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="idmanager"'}
        return problem(request, 401, "Unauthorized", exc.detail, "unauthorized", headers=headers)
    return problem(request, 403, "Forbidden", exc.detail, "forbidden")


async def validation_error(request: Request, exc: Exception) -> Response:
    """Render FastAPI's request validation: 400 for unreadable JSON, else 422."""
    assert isinstance(exc, RequestValidationError)
    _count(request, "RequestValidationError")
    # Keep where and why; leave out the input, which may be large or hostile.
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem(request, 400, "Malformed JSON", "The body is not valid JSON", "bad-json")
    detail = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors[:5]
    )
    return problem(request, 422, "Invalid request", detail, "validation-error", errors=errors[:20])


async def http_error(request: Request, exc: Exception) -> Response:
    """Render Starlette's own errors (unknown route, wrong method) as problems."""
    assert isinstance(exc, HTTPException)
    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path; name them all.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return problem(request, exc.status_code, title, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    allowed = []
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.routes):
            allowed.append(method)
    return allowed


async def internal_error(request: Request, exc: Exception) -> Response:
    """Render anything unexpected as a 500 that reveals no internals."""
    _count(request, type(exc).__name__)
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        request,
        500,
        "Internal Server Error",
        "An unexpected error occurred; it has been logged.",
        "internal-error",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the handlers above."""
    app.add_exception_handler(IdManagerError, domain_error)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
