"""Console sessions: a signed cookie naming a key by its fingerprint, and CSRF tokens.

The cookie is ``<payload>.<signature>``: the payload is base64url JSON ``{"f", "e", "n"}`` (the
key's fingerprint, or null before login; the expiry in Unix seconds; a random nonce), the
signature HMAC-SHA256 over the payload. It never holds the key: each request looks the
fingerprint up among the configured keys again, so removing a key ends its sessions.

The standard library's ``hmac`` is enough for one MAC and one expiry; a signing library would
add a dependency for the same two dozen lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

COOKIE = "idmanager_console"
CSRF_FIELD = "csrf"
_CSRF_CONTEXT = b"idmanager-console-csrf:"


@dataclass(frozen=True, slots=True)
class Session:
    """What a valid cookie says: whose session, until when, and its value (for CSRF)."""

    fingerprint: str | None  # None: not logged in (yet)
    expires: int
    cookie: str


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and reads session cookies and their CSRF tokens with one secret."""

    def __init__(self, secret: bytes, minutes: int) -> None:
        self._secret = secret
        self.seconds = minutes * 60

    def _mac(self, data: bytes) -> str:
        return _encode(hmac.new(self._secret, data, hashlib.sha256).digest())

    def issue(self, fingerprint: str | None, now: float) -> Session:
        """Return a new session for ``fingerprint`` (None: a visitor not logged in)."""
        expires = int(now) + self.seconds
        body = {"f": fingerprint, "e": expires, "n": secrets.token_urlsafe(12)}
        payload = _encode(json.dumps(body, separators=(",", ":")).encode())
        return Session(fingerprint, expires, f"{payload}.{self._mac(payload.encode())}")

    def read(self, cookie: str | None, now: float) -> Session | None:
        """Return the session of a cookie; None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(self._mac(payload.encode()), signature):
            return None
        try:
            body = json.loads(_decode(payload))
        except (ValueError, binascii.Error):  # pragma: no cover - we signed it
            return None
        fingerprint, expires = body.get("f"), body.get("e")
        if not isinstance(expires, int) or expires <= now:
            return None
        if fingerprint is not None and not isinstance(fingerprint, str):  # pragma: no cover
            return None
        return Session(fingerprint, expires, cookie)

    def csrf(self, session: Session) -> str:
        """Return the CSRF token of a session: forms carry it, POSTs must send it back."""
        return self._mac(_CSRF_CONTEXT + session.cookie.encode())

    def check_csrf(self, session: Session | None, token: object) -> bool:
        """Return True when ``token`` is the CSRF token of ``session``."""
        if session is None or not isinstance(token, str) or not token:
            return False
        return hmac.compare_digest(self.csrf(session), token)
