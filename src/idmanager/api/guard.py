"""Refuse requests from the wrong host, peer or site, however the app is served.

- The ``Host`` header must name this service (``IDMANAGER_ALLOWED_HOSTS``): a page of
  another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) is refused.
- With no API keys configured every request is an admin's, so only the machine itself may
  send them: other peers are refused, whatever address the server listens on.
- A change asked by another site's page is refused: browsers send such requests without
  asking first only as forms or text, or with an ``Origin`` or ``Sec-Fetch-Site`` header
  that names the other site. The JSON API takes JSON bodies only.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from ..problems import PROBLEM_JSON, ProblemKind, kind
from ..settings import Settings
from .errors import problem_body

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a browser sends to another site without asking it first (a "simple" request).
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
# Pages whose forms are protected otherwise (CSRF tokens, SameSite cookies).
FORM_PATHS = ("/console",)


def _host_name(value: str) -> str:
    """Return the host name of a ``Host`` header, without its port."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Guard:
    """ASGI middleware applying the rules above; cheap: a few header lookups."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        hosts = {h.lower().strip("[]") for h in [*settings.allowed_hosts, settings.host]}
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts)
        self.open = not settings.api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                found, detail = refusal
                await _refuse(scope, send, found, detail)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[ProblemKind, str] | None:
        """Return the kind of refusal and its detail, or None if the rules let ``scope`` in."""
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.any_host and _host_name(host) not in self.hosts:
            return kind("host-not-allowed"), (
                f"Host {host[:100]!r} is not one this service answers to; add it to "
                "IDMANAGER_ALLOWED_HOSTS"
            )
        client = scope.get("client")
        if self.open and not _is_loopback(client[0] if client else None):
            return kind("loopback-only"), kind("loopback-only").example
        if scope["method"] in CHANGES:
            # Behind a root path (``--root-path``), servers put it in front of the path.
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            return self._cross_site(path.removeprefix(root) if root else path, headers)
        return None

    def _cross_site(self, path: str, headers: dict[bytes, bytes]) -> tuple[ProblemKind, str] | None:
        origin = headers.get(b"origin", b"").decode("latin-1")
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        host = headers.get(b"host", b"").decode("latin-1").lower()
        # Only this service's own pages: the same host AND port (another program on
        # localhost:3000 is another site, though the browser calls it "same-site").
        foreign_origin = bool(origin) and origin != "null" and not self._own(origin, host)
        # An Origin of "null" is refused, unless the browser says the page is this site's own:
        # under Referrer-Policy: no-referrer (the console's pages) Chromium posts forms so.
        opaque = origin == "null" and site != "same-origin"
        if site not in ("", "same-origin", "none") or foreign_origin or opaque:
            shown = origin[:100] or "another site"
            return kind("cross-site-request"), (
                f"A change requested from another site's page ({shown}) is refused"
            )
        media = headers.get(b"content-type", b"").decode("latin-1").lower()
        if media.startswith(FORM_TYPES) and not path.startswith(FORM_PATHS):
            return kind("unsupported-media-type"), kind("unsupported-media-type").example
        return None

    @staticmethod
    def _own(origin: str, host: str) -> bool:
        return urlsplit(origin).netloc.lower() == host


async def _refuse(scope: Scope, send: Send, found: ProblemKind, detail: str) -> None:
    raw = scope.get("raw_path") or scope["path"].encode()
    body = json.dumps(
        problem_body(found, found.status, found.title, detail, raw.decode("latin-1"))
    ).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": found.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
