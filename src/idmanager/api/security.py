"""Bearer API keys with roles and scopes. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..domain.errors import ForbiddenError, NotAuthenticatedError
from ..settings import ApiKey, Role


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, the scopes it may use, and a name for the audit trail that
    does not reveal the key."""

    role: Role
    actor: str
    scopes: tuple[str, ...] | None = None  # glob patterns; None: every scope

    def may(self, needed: Role) -> bool:
        """Return True when the role includes ``needed``."""
        return self.role.rank >= needed.rank

    def allows(self, scope: str) -> bool:
        """Return True when this caller may use ``scope``."""
        return self.scopes is None or any(fnmatchcase(scope, p) for p in self.scopes)

    def check_scope(self, scope: str) -> str:
        """Return ``scope`` if this caller may use it.

        Raises:
            ForbiddenError: the key is bound to other scopes.
        """
        if not self.allows(scope):
            raise ForbiddenError(f"This key may not use scope {scope!r}")
        return scope

    @property
    def only_scope(self) -> str | None:
        """Return the one scope a key bound to a single exact scope may use, else None."""
        if self.scopes is not None and len(self.scopes) == 1:
            pattern = self.scopes[0]
            if not any(c in pattern for c in "*?["):
                return pattern
        return None


ANONYMOUS = Principal(Role.ADMIN, "anonymous")


def fingerprint(key: str) -> str:
    """Return a short, stable name of a key that does not reveal it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    """The configured API keys. With none, every request is allowed (loopback-only serving)."""

    def __init__(self, keys: Mapping[str, ApiKey]) -> None:
        # Each key's caller, made once: its name is a hash of the key.
        self._keys = [
            (key.encode(), Principal(spec.role, f"api-key:{fingerprint(key)}", spec.scopes))
            for key, spec in keys.items()
        ]

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
        found: Principal | None = None
        # Compare with every key, not stopping at a match: timing reveals nothing.
        for key, principal in self._keys:
            if hmac.compare_digest(key, given):
                found = principal
        if found is None:
            raise NotAuthenticatedError("Invalid API key")
        return found

    def by_fingerprint(self, name: str) -> Principal | None:
        """Return the caller whose key has the fingerprint ``name``, or None if no key has.

        A console session names its key only by fingerprint; looking it up on every request
        ends the sessions of a key that is no longer configured.
        """
        found: Principal | None = None
        for _, principal in self._keys:
            if hmac.compare_digest(principal.actor.encode(), f"api-key:{name}".encode()):
                found = principal
        return found

    def authorize(self, token: str | None, needed: Role) -> Principal:
        """Return the caller if its role includes ``needed``.

        Raises:
            NotAuthenticatedError: a missing or unknown key.
            ForbiddenError: a role too low.
        """
        principal = self.identify(token)
        if not principal.may(needed):
            raise ForbiddenError(
                f"This operation needs the '{needed}' role; the key has '{principal.role}'"
            )
        return principal
