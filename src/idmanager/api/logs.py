"""Log output as text or as one JSON object per line (``IDMANAGER_LOG_FORMAT``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TextIO

# uvicorn configures these before it calls the app factory; JSON output restyles them too.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler this module installs (recognised so it is installed once)."""


def configure_logging(log_format: str) -> None:
    """Send the ``idmanager`` logs to stderr in ``log_format`` ('text' or 'json')."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(levelname)-8s %(name)s: %(message)s")
    )
    logger = logging.getLogger("idmanager")
    handlers: list[logging.Handler] = [h for h in logger.handlers if isinstance(h, _Handler)]
    if not handlers:
        handlers = [_Handler()]
        logger.addHandler(handlers[0])
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(formatter)
    if log_format == "json":
        for name in UVICORN_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(formatter)
