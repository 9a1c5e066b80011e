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

from ..domain.errors import IdManagerError, NotAuthenticatedError
from ..problems import PROBLEM_JSON, ProblemKind, kind, kind_of

logger = logging.getLogger("idmanager.api")

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def problem_body(
    found: ProblemKind | None,
    status: int,
    title: str,
    detail: str | None,
    instance: str,
    **extra: Any,
) -> dict[str, Any]:
    """Return the RFC 9457 body of a problem (``about:blank`` when it has no kind)."""
    return {
        "type": found.type if found else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }


def problem(
    request: Request,
    found: ProblemKind,
    detail: str | None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Return a problem+json response of a known kind."""
    if found.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(found.retry_after)}
    body = problem_body(found, found.status, found.title, detail, _instance(request), **extra)
    return JSONResponse(body, status_code=found.status, headers=headers, media_type=PROBLEM_JSON)


def _instance(request: Request) -> str:
    # The path as sent, still percent-encoded: a URI reference even for hostile paths.
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path


def _count(request: Request, error_type: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(error_type).inc()


async def domain_error(request: Request, exc: Exception) -> Response:
    """Render an ``IdManagerError``, choosing its status code from its kind."""
    _count(request, type(exc).__name__)
    found = kind_of(exc)
    if found.status == 500:
        return await internal_error(request, exc)
    if found.status == 503:
        # The cause names hosts and driver internals: log it, answer plainly.
        logger.warning("%s: %s", found.title.lower(), exc)
        return problem(request, found, found.example)
    if isinstance(exc, NotAuthenticatedError):
        headers = {"WWW-Authenticate": 'Bearer realm="idmanager"'}
        return problem(request, found, str(exc), headers=headers)
    return problem(request, found, str(exc))


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
        bad_json = kind("bad-json")
        return problem(request, bad_json, bad_json.example)
    detail = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors[:5]
    )
    return problem(request, kind("validation-error"), detail, errors=errors[:20])


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
    if exc.status_code == 413:
        return problem(request, kind("body-too-large"), detail, headers=headers)
    if exc.status_code == 400:
        # FastAPI's own refusal of a body it cannot decode (not UTF-8, nested too deep).
        bad_json = kind("bad-json")
        return problem(request, bad_json, bad_json.example, headers=headers)
    body = problem_body(None, exc.status_code, title, detail, _instance(request))
    return JSONResponse(body, status_code=exc.status_code, headers=headers, media_type=PROBLEM_JSON)


def _allowed_methods(request: Request) -> list[str]:
    root = request.scope.get("root_path", "")
    if root != request.scope.get("app_root_path", root):
        # Inside a mount (its path added to root_path): the static files, GET and HEAD.
        return ["GET", "HEAD"]
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
    internal = kind("internal-error")
    return problem(request, internal, internal.example)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the handlers above."""
    app.add_exception_handler(IdManagerError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
