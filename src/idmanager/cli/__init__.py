"""The ``idmanager`` command line: thin commands over the use cases, for operators and scripts."""

from . import audit, commands, doctor, import_legacy, serve
from .base import app

__all__ = ["app", "audit", "commands", "doctor", "import_legacy", "serve"]
