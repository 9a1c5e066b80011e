"""Routes for the HTTP ladder: the bare endpoint plus one piece of the allocation route.

Added to the bench app (bench/http_app.py) by bench/ladder.py. Each route answers what the
bare endpoint answers (the same JSON shape): ``/ladder/auth`` checks the API key as a FastAPI
dependency (as the allocation route did before it checked the key inline), and
``/ladder/allocate`` allocates through the library's use cases, with none of the route's
other work.
"""

from __future__ import annotations

import itertools
import json

from fastapi import FastAPI, Request
from fastapi.responses import Response
from internals import route_parameters

GenerateAccess = route_parameters()["GenerateAccess"]


def _answer(prefix: str, ids: list[str]) -> Response:
    body = json.dumps({"prefix": prefix, "ids": ids, "count": len(ids)}, separators=(",", ":"))
    return Response(body.encode(), status_code=201, media_type="application/json")


def add_routes(app: FastAPI) -> None:
    """Register the ladder's routes on ``app`` (before its first request)."""
    counter = itertools.count(1)
    before = len(app.router.routes)

    @app.post("/ladder/auth/{prefix}/ids", status_code=201, include_in_schema=False)
    async def auth(prefix: str, _: GenerateAccess, count: int = 1) -> Response:
        return _answer(prefix, [f"{prefix}-{next(counter)}"])

    @app.post("/ladder/allocate/{prefix}/ids", status_code=201, include_in_schema=False)
    async def allocate(request: Request, prefix: str, count: int = 1) -> Response:
        ids = await request.app.state.use_cases.allocate(prefix, count)
        return _answer(ids.prefix, ids[:])

    # Right after the bare endpoint (first): FastAPI tries routes in order, and every route
    # tried before a match costs Python calls, which would blur each step's cost.
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[1:1] = added
