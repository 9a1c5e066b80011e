"""Random API keys for tests that drive a real server: one per role, never reused."""

from __future__ import annotations

import secrets


class Keys:
    """An API key per role, for ``IDMANAGER_API_KEYS`` and ``Authorization`` headers."""

    def __init__(self) -> None:
        self.read = "r-" + secrets.token_urlsafe(18)
        self.generate = "g-" + secrets.token_urlsafe(18)
        self.admin = "a-" + secrets.token_urlsafe(18)

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.read, self.generate, self.admin)

    def env(self) -> str:
        return f"{self.read}:read,{self.generate}:generate,{self.admin}:admin"

    def header(self, role: str | None) -> dict[str, str]:
        """Return the Authorization header of a role (None: no header; 'wrong': a bad key)."""
        if role is None:
            return {}
        key = "wrong-" + secrets.token_urlsafe(12) if role == "wrong" else getattr(self, role)
        return {"Authorization": f"Bearer {key}"}
