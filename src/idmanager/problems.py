"""The RFC 9457 problem vocabulary that the HTTP service speaks and its client reads.

One table, so that the status and ``type`` of each domain error cannot drift apart between
the server that writes them and the client that turns them back into exceptions.
"""

from __future__ import annotations

from .domain.errors import (
    ConflictError,
    FormatLockedError,
    IdManagerError,
    InvalidCountError,
    InvalidFormatError,
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    InvalidScopeError,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    StorageError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:idmanager:problem:"

# Most specific first: the first class an error is an instance of decides.
# (class, status, kind, title); ``type`` is TYPE_PREFIX + kind.
DOMAIN_PROBLEMS: tuple[tuple[type[IdManagerError], int, str, str], ...] = (
    (InvalidPrefixError, 422, "invalid-prefix", "Invalid prefix"),
    (InvalidScopeError, 422, "invalid-scope", "Invalid scope"),
    (InvalidIdError, 422, "invalid-id", "Invalid ID"),
    (InvalidCountError, 422, "invalid-count", "Invalid count"),
    (InvalidFormatError, 422, "invalid-format", "Invalid format"),
    (InvalidInputError, 422, "invalid-input", "Invalid input"),
    (PrefixNotFoundError, 404, "prefix-not-found", "Prefix not found"),
    (PrefixInactiveError, 409, "prefix-inactive", "Prefix inactive"),
    (ResetRefusedError, 409, "reset-refused", "Reset refused"),
    (FormatLockedError, 409, "format-locked", "Format locked"),
    (ConflictError, 409, "conflict", "Conflict"),
    (StorageError, 503, "storage-unavailable", "Database unavailable"),
)
