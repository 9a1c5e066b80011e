"""The ``idmanager`` command line: thin commands over the use cases, for operators and scripts."""

from . import audit, commands, import_legacy, serve
from .base import app

__all__ = ["app", "audit", "commands", "import_legacy", "serve"]
