"""Refuse oversized request bodies, however they arrive: 413 problem+json.

A ``Content-Length`` above the limit is refused before anything is read. A body without one
(``Transfer-Encoding: chunked``) is counted while it streams in, and refused as soon as it
passes the limit: nothing more is read, and nothing of it is parsed.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..problems import PROBLEM_JSON, kind
from .errors import problem_body

# The largest valid body (a configuration or a reset) is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised out of ``receive`` when the body passes the limit.

    An HTTP exception, so that FastAPI's body parsing passes it on as it is (it turns any
    other error into a 400) and the error handlers render it as the registry's 413.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"The request body must not exceed {limit:,} bytes", {"Connection": "close"}
        )


class BodyLimit:
    """Answer 413 to a request whose body exceeds ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            # Raised where no error handler ran (outside FastAPI's routes).
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        raw = scope.get("raw_path") or scope["path"].encode()
        too_large = kind("body-too-large")
        body = json.dumps(
            problem_body(
                too_large,
                too_large.status,
                too_large.title,
                f"The request body must not exceed {self.limit:,} bytes",
                raw.decode("latin-1"),
            )
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
