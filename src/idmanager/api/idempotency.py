"""The ``Idempotency-Key`` request header: one request per key, however often it is sent.

A client that lost an answer (a timeout, a dropped connection, a server killed mid-response)
sends the same request again with the same key: it gets the first answer back, with
``Idempotent-Replayed: true``, and nothing is done twice. Keys belong to the API key that
sent them, and are remembered for ``IDMANAGER_IDEMPOTENCY_TTL_S`` (24 h by default).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from fastapi import Header

from ..domain.errors import InvalidInputError
from ..domain.repository import Claim
from .security import Principal

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_VALID = re.compile(r"[\x21-\x7e]{1,255}")

DESCRIPTION = (
    "Makes the request safe to send again: a repeat with the same key gets the first "
    "answer back (same IDs; header Idempotent-Replayed: true) and does nothing twice. One "
    "key names one request: the same key with another request is refused (422). Keys "
    "belong to the API key that sent them and are remembered 24 hours. 1 to 255 visible "
    "ASCII characters, e.g. a UUID."
)
IdempotencyKey = Annotated[
    str | None, Header(alias=HEADER, max_length=255, description=DESCRIPTION)
]
# The same parameter documented on the allocation route, which reads its headers itself.
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": DESCRIPTION,
    "schema": {"type": "string", "maxLength": 255, "examples": ["3f2b8c1e-9d4a-4b7e-a1f0"]},
}


def claim(principal: Principal, key: str | None, *request: object) -> Claim | None:
    """Return the claim of a request sent with ``key`` (None without a key).

    ``request`` names what the request asks: the same key with other values is another
    request, refused.

    Raises:
        InvalidInputError: the key is empty, too long or not visible ASCII.
    """
    if key is None:
        return None
    if not _VALID.fullmatch(key):
        raise InvalidInputError(f"{HEADER} must be 1 to 255 visible ASCII characters")
    text = json.dumps([str(part) for part in request], separators=(",", ":"))
    return Claim(principal.actor, key, hashlib.sha256(text.encode()).hexdigest())
