"""The app `make bench` serves: IdManager's service plus a bare FastAPI endpoint beside it.

The bare endpoint parses the same request (a path parameter and ``count``) and answers the
same JSON shape with an ID from a counter in memory: the most any FastAPI endpoint handing
out IDs can do on this server. Bench-only; not part of the package.

``uvicorn http_app:create_bench_app --factory --app-dir bench``.
"""

from __future__ import annotations

import itertools
import json

from fastapi import FastAPI
from fastapi.responses import Response

from idmanager.api import create_app


def create_bench_app() -> FastAPI:
    """Return the service, configured from ``IDMANAGER_*``, with ``POST /bare/{prefix}/ids``."""
    app = create_app()
    counter = itertools.count(1)

    @app.post("/bare/{prefix}/ids", status_code=201, include_in_schema=False)
    async def bare(prefix: str, count: int = 1) -> Response:
        ids = [f"{prefix}-{n}" for n in itertools.islice(counter, count)]
        body = json.dumps({"prefix": prefix, "ids": ids, "count": count}, separators=(",", ":"))
        return Response(body.encode(), status_code=201, media_type="application/json")

    # First in the route list: FastAPI tries the routes in order, and each miss costs about
    # 60 Python calls, so a bare endpoint tried last would be slowed by every route before it.
    app.router.routes.insert(0, app.router.routes.pop())
    return app
