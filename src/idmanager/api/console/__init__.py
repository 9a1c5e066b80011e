"""The operator console at ``/console``: server-rendered pages over the API's own use cases.

Pages are Jinja2 templates; htmx (one vendored, pinned file) only enhances them with live
previews and dry runs, so every form works without JavaScript. Access is a key login kept in
a signed cookie, with a CSRF token in every form.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ...settings import Settings
from . import auth, changes, formats, sequences
from .render import base_path
from .route import ConsoleRoute, secure
from .state import STATIC, ConsoleState

__all__ = ["install_console"]


class _Static(StaticFiles):
    """The console's CSS and script, with the same security headers as its pages."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        return secure(await super().get_response(path, scope))


async def _home(request: Request) -> Response:
    # A path, not a URL: nothing is taken from the Host header.
    return RedirectResponse(base_path(request), 307)


_fallback = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@_fallback.api_route("/{path:path}", methods=["GET", "POST"])
async def _missing(path: str) -> Response:
    """Answer an unknown console address with a page, not a JSON problem."""
    raise HTTPException(404, "There is no such page in the console.")


def install_console(app: FastAPI, settings: Settings) -> None:
    """Serve the console at ``/console``, its files at ``/console/static``, and ``/`` → it."""
    app.state.console = ConsoleState.of(settings)
    app.mount("/console/static", _Static(directory=STATIC), name="console-static")
    for module in (auth, sequences, formats, changes):
        app.include_router(module.router)
    app.include_router(_fallback)  # last: it matches any console address
    app.add_api_route("/", _home, methods=["GET"], include_in_schema=False)
