"""Refuse oversized request bodies before reading them: 413 problem+json."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ..problems import PROBLEM_JSON, TYPE_PREFIX

# The largest valid body (a configuration or a reset) is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """Answer 413 to a request whose ``Content-Length`` exceeds ``limit`` bytes.

    The check happens on the header, so a client announcing gigabytes is refused at once
    instead of being read (or waited for).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                await self._refuse(scope, send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        raw = scope.get("raw_path") or scope["path"].encode()
        body = json.dumps(
            {
                "type": TYPE_PREFIX + "body-too-large",
                "title": "Request body too large",
                "status": 413,
                "detail": f"The request body must not exceed {self.limit:,} bytes",
                "instance": raw.decode("latin-1"),
            }
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
