"""Routes for the HTTP ladder: the bare endpoint, then the allocation route's pieces one by one.

Added to the bench app (bench/http_app.py) by bench/ladder.py. Each route answers what the
bare endpoint answers (an ID from a counter in memory, the same JSON), with one more piece of
the real route ``POST /api/v1/prefixes/{prefix}/ids``: its API key check, its query
parameters, its metrics; and the lean prototype's allocation in place of the counter.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from internals import record_allocation, route_parameters
from lean import LeanAsyncAllocator

P = route_parameters()
PrefixPath, GenerateAccess, Scope, OnDate = (
    P["PrefixPath"],
    P["GenerateAccess"],
    P["Scope"],
    P["OnDate"],
)
Count = Annotated[int, Query(ge=1, description="How many IDs to allocate.")]


def _answer(prefix: str, ids: list[str]) -> Response:
    body = json.dumps({"prefix": prefix, "ids": ids, "count": len(ids)}, separators=(",", ":"))
    return Response(body.encode(), status_code=201, media_type="application/json")


def add_routes(app: FastAPI) -> None:
    """Register the ladder's routes on ``app`` (before its first request)."""
    counter = itertools.count(1)
    lean: list[LeanAsyncAllocator] = []
    before = len(app.router.routes)

    def allocator(request: Request) -> LeanAsyncAllocator:
        if not lean:
            lean.append(LeanAsyncAllocator(request.app.state.engine))
        return lean[0]

    @app.post("/ladder/auth/{prefix}/ids", status_code=201, include_in_schema=False)
    async def auth(prefix: str, _: GenerateAccess, count: int = 1) -> Response:
        return _answer(prefix, [f"{prefix}-{next(counter)}"])

    @app.post("/ladder/params/{prefix}/ids", status_code=201, include_in_schema=False)
    async def params(
        prefix: PrefixPath,
        _: GenerateAccess,
        count: Count = 1,
        scope: Scope = "",
        on: OnDate = None,
    ) -> Response:
        return _answer(prefix, [f"{prefix}-{next(counter)}"])

    @app.post("/ladder/metrics/{prefix}/ids", status_code=201, include_in_schema=False)
    async def metrics(
        request: Request,
        prefix: PrefixPath,
        _: GenerateAccess,
        count: Count = 1,
        scope: Scope = "",
        on: OnDate = None,
    ) -> Response:
        started = time.perf_counter()
        ids = [f"{prefix}-{next(counter)}"]
        record_allocation(request.app.state.metrics, prefix, 1, time.perf_counter() - started)
        return _answer(prefix, ids)

    @app.post("/ladder/lean/{prefix}/ids", status_code=201, include_in_schema=False)
    async def lean_bare(request: Request, prefix: str, count: int = 1) -> Response:
        ids = await allocator(request).allocate(prefix, count)
        return _answer(ids.prefix, ids[:])

    @app.post("/ladder/lean-route/{prefix}/ids", status_code=201, include_in_schema=False)
    async def lean_route(
        request: Request,
        prefix: PrefixPath,
        _: GenerateAccess,
        count: Count = 1,
        scope: Scope = "",
        on: OnDate = None,
    ) -> Response:
        started = time.perf_counter()
        ids = await allocator(request).allocate(prefix, count, scope=scope)
        record_allocation(
            request.app.state.metrics, ids.prefix, len(ids), time.perf_counter() - started
        )
        return _answer(ids.prefix, ids[:])

    # Right after the bare endpoint (first): FastAPI tries routes in order, and every route
    # tried before a match costs about 60 Python calls, which would blur each step's cost.
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[1:1] = added
