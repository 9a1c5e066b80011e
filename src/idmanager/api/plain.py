"""The allocation route's plain requests, answered before the rest of the app's stack.

Every request through FastAPI passes its middleware, routing, and a Request and a Response
object each: on this route, about 100 µs of CPU per request, as much as the allocation
itself (docs/benchmarks.md). :class:`PlainAllocations` sits outermost in the app's own
middleware and answers a *plain* allocation itself:

- ``POST /api/v1/prefixes/{prefix}/ids`` with no root path;
- no body (no ``Transfer-Encoding``, a ``Content-Length`` of 0 if any);
- what the guard lets in (api/guard.py: the host, the peer, the site);
- a query of at most ``count`` (a number of 1 to 9 digits, up to ``STREAM_ABOVE``),
  ``scope`` (up to 255 characters) and ``date`` (shaped ``YYYY-MM-DD``).

Its work is the route's: the same key check, the same :func:`routes.allocate`, the same
body; its errors are rendered by the same handlers (api/errors.py). Anything else goes down
the whole stack, where FastAPI validates it and answers: that is the reference, and the
tests compare the two (tests/unit/test_hot_route.py).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..application.service import MAX_SCOPE_LENGTH
from ..domain.errors import IdManagerError
from ..settings import Role, Settings
from . import idempotency
from .deps import DATE_PATTERN, bearer_token
from .errors import domain_error
from .guard import Guard
from .routes import IDS_PATH, STREAM_ABOVE, allocate, router
from .security import KeyRing

# The route's path, its {prefix} as Starlette matches it (no '/').
_PATH = re.compile(re.escape(router.prefix + IDS_PATH).replace(r"\{prefix\}", "([^/]+)"))
_COUNT = re.compile(r"[1-9][0-9]{0,8}")
_DATE = re.compile(DATE_PATTERN)
_AUTHORIZATION, _KEY = b"authorization", idempotency.HEADER.lower().encode()
_BODY_HEADERS = (b"content-length", b"transfer-encoding")
_JSON = (b"content-type", b"application/json")
_REPLAYED = idempotency.REPLAYED.lower().encode()

# The parameters of a plain request: prefix, count, scope, date, bearer token, idempotency key.
Plain = tuple[str, int, str, str | None, str | None, str | None]


class PlainAllocations:
    """ASGI middleware: answers plain allocation requests, passes on every other request."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.guard = Guard(app, settings)  # for its rules; requests they refuse pass on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = self.plain(scope) if scope["type"] == "http" else None
        if asked is None:
            await self.app(scope, receive, send)
            return
        prefix, count, tenant, on, token, key = asked
        state = scope["app"].state
        try:
            keys: KeyRing = state.keys
            principal = keys.authorize(token, Role.GENERATE)
            allocation = await allocate(state, prefix, principal, count, tenant, on, key)
        except IdManagerError as exc:
            response = await domain_error(Request(scope), exc)
            await response(scope, receive, send)
            return
        body = allocation.body()
        headers = [(b"content-length", str(len(body)).encode()), _JSON]
        if allocation.replayed is not None:
            headers.append((_REPLAYED, b"true" if allocation.replayed else b"false"))
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def plain(self, scope: Scope) -> Plain | None:
        """Return the parameters of a plain allocation request, or None for any other."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = _PATH.fullmatch(scope["path"])
        if path is None:
            return None
        count, tenant, on = 1, "", None
        if scope["query_string"]:
            # As Starlette reads a query: the last of repeated names counts.
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            text, tenant, on = query.get("count"), query.get("scope", ""), query.get("date")
            if text is not None:
                if not _COUNT.fullmatch(text):
                    return None
                count = int(text)
                if count > STREAM_ABOVE:
                    return None
            if len(tenant) > MAX_SCOPE_LENGTH or (on is not None and not _DATE.fullmatch(on)):
                return None
        authorization = key = None
        for name, value in scope["headers"]:
            if name in _BODY_HEADERS and (name != b"content-length" or value != b"0"):
                return None
            # As Starlette reads a header: the first of repeated names counts.
            if name == _AUTHORIZATION and authorization is None:
                authorization = value.decode("latin-1")
            elif name == _KEY and key is None:
                key = value.decode("latin-1")
        if self.guard.refusal(scope) is not None:
            return None
        return path.group(1), count, tenant, on, bearer_token(authorization), key
