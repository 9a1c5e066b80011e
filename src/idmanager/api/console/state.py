"""What the console keeps per app: its session signer, its clock and its templates."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ...settings import Settings
from .session import SessionSigner

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def templates() -> Environment:
    """Return the Jinja2 environment: autoescaped HTML, and a missing variable is an error."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@dataclass
class ConsoleState:
    """The console's part of ``app.state``; tests may replace ``clock``."""

    signer: SessionSigner
    env: Environment
    clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, settings: Settings) -> ConsoleState:
        """Return the state the settings ask for.

        Without ``console_secret`` each process signs with a random key of its own: sessions
        then end when the process restarts, and need one worker (or a shared secret).
        """
        given = settings.console_secret
        secret = given.get_secret_value().encode() if given else secrets.token_bytes(32)
        return cls(SessionSigner(secret, settings.console_session_minutes), templates())


def console_state(request: Request) -> ConsoleState:
    """Return the console state of the app serving ``request``."""
    state: ConsoleState = request.app.state.console
    return state
