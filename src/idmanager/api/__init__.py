"""The HTTP service: a FastAPI app over the use cases (``create_app``)."""

from .app import create_app

__all__ = ["create_app"]
