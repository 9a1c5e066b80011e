"""Bearer API keys with roles. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from ..domain.errors import ForbiddenError, NotAuthenticatedError
from ..settings import Role


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, and a name for the audit trail that does not reveal the key."""

    role: Role
    actor: str


ANONYMOUS = Principal(Role.ADMIN, "anonymous")


class KeyRing:
    """The configured API keys. With none, every request is allowed (loopback-only serving)."""

    def __init__(self, keys: Mapping[str, Role]) -> None:
        self._keys = [(key.encode(), Role(role)) for key, role in keys.items()]

    @property
    def open(self) -> bool:
        """True when no keys are configured."""
        return not self._keys

    def identify(self, token: str | None) -> Principal:
        """Return the caller a bearer token belongs to.

        Raises:
            NotAuthenticatedError: the token is missing or matches no key.
        """
        if self.open:
            return ANONYMOUS
        if not token:
            raise NotAuthenticatedError(
                "Missing bearer token: send 'Authorization: Bearer <API key>'"
            )
        given = token.encode()
        found: Role | None = None
        # Compare with every key, not stopping at a match: timing reveals nothing.
        for key, role in self._keys:
            if hmac.compare_digest(key, given):
                found = role
        if found is None:
            raise NotAuthenticatedError("Invalid API key")
        fingerprint = hashlib.sha256(given).hexdigest()[:12]
        return Principal(found, f"api-key:{fingerprint}")

    def authorize(self, token: str | None, needed: Role) -> Principal:
        """Return the caller if its role includes ``needed``.

        Raises:
            NotAuthenticatedError: a missing or unknown key.
            ForbiddenError: a role too low.
        """
        principal = self.identify(token)
        if principal.role.rank < needed.rank:
            raise ForbiddenError(
                f"This operation needs the '{needed}' role; the key has '{principal.role}'"
            )
        return principal
