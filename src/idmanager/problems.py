"""Every kind of error, once: its HTTP status, problem type, title, exit code and example.

The HTTP service renders errors from this table (RFC 9457 ``application/problem+json``) and
documents its routes' responses from it; the command line takes its exit codes from it; the
Python client turns problems back into the library's exceptions with it. A new kind of error
is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .domain.errors import (
    AmbiguousFormatError,
    BusyError,
    ConflictError,
    ForbiddenError,
    FormatLockedError,
    IdempotencyKeyReusedError,
    IdManagerError,
    InvalidCountError,
    InvalidFormatError,
    InvalidIdError,
    InvalidInputError,
    InvalidPrefixError,
    InvalidScopeError,
    LimitReachedError,
    NotAuthenticatedError,
    PrefixInactiveError,
    PrefixNotFoundError,
    ResetRefusedError,
    StorageError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:idmanager:problem:"

# Exit codes of the command line.
EXIT_OK = 0
EXIT_ERROR = 1  # the database is unavailable or failing; `health`: unhealthy
EXIT_INPUT = 2  # bad input or configuration (Click's own usage errors are 2 as well)
EXIT_CONFLICT = 3  # the sequence's state refuses: inactive prefix, backwards reset
EXIT_NOT_FOUND = 4  # the prefix does not exist
EXIT_BUSY = 5  # the sequence is busy (locked, or a conflict): nothing changed, try again
EXIT_ACCESS = 6  # not allowed


@dataclass(frozen=True, slots=True)
class ProblemKind:
    """One kind of error, as every edge of IdManager shows it."""

    kind: str
    status: int
    title: str
    exit_code: int
    example: str
    error: type[IdManagerError] | None = None  # None: an HTTP-level problem only
    retry_after: int | None = None  # seconds a client should wait (503s)

    @property
    def type(self) -> str:
        """Return the problem's ``type`` URI."""
        return TYPE_PREFIX + self.kind


# Most specific first: the first kind whose error class an error is an instance of decides.
KINDS: tuple[ProblemKind, ...] = (
    ProblemKind(
        "invalid-prefix",
        422,
        "Invalid prefix",
        EXIT_INPUT,
        "Prefix can only contain uppercase letters, numbers, and underscores",
        InvalidPrefixError,
    ),
    ProblemKind(
        "invalid-scope",
        422,
        "Invalid scope",
        EXIT_INPUT,
        "Scope can only contain letters, numbers, and the characters _.:@-",
        InvalidScopeError,
    ),
    ProblemKind(
        "invalid-id",
        422,
        "Invalid ID",
        EXIT_INPUT,
        "Invalid ID 'CUS-AA1': expected at least 3 letters, got 2",
        InvalidIdError,
    ),
    ProblemKind(
        "invalid-count",
        422,
        "Invalid count",
        EXIT_INPUT,
        "Count must not exceed 10,000 per call, got 20,000",
        InvalidCountError,
    ),
    ProblemKind(
        "invalid-format",
        422,
        "Invalid format",
        EXIT_INPUT,
        "Letter width must be between 0 and 8, got 9",
        InvalidFormatError,
    ),
    ProblemKind(
        "idempotency-key-reused",
        422,
        "Idempotency key reused",
        EXIT_INPUT,
        "This Idempotency-Key was used with another request; a key names one request: send "
        "a new key for a new request",
        IdempotencyKeyReusedError,
    ),
    ProblemKind(
        "invalid-input",
        422,
        "Invalid input",
        EXIT_INPUT,
        "skip and limit must be between 0 and 9223372036854775807",
        InvalidInputError,
    ),
    ProblemKind(
        "prefix-not-found",
        404,
        "Prefix not found",
        EXIT_NOT_FOUND,
        "Prefix CUS does not exist",
        PrefixNotFoundError,
    ),
    ProblemKind(
        "prefix-inactive",
        409,
        "Prefix inactive",
        EXIT_CONFLICT,
        "Prefix CUS is inactive and issues no new IDs",
        PrefixInactiveError,
    ),
    ProblemKind(
        "reset-refused",
        409,
        "Reset refused",
        EXIT_CONFLICT,
        "Resetting CUS to CUS-AAA0001 would move it backwards from CUS-AAA0042 and issue IDs "
        "again; pass force=True to do it anyway",
        ResetRefusedError,
    ),
    ProblemKind(
        "format-locked",
        409,
        "Format locked",
        EXIT_CONFLICT,
        "Prefix CUS has issued IDs; its format can no longer change",
        FormatLockedError,
    ),
    ProblemKind(
        "ambiguous-format",
        409,
        "Ambiguous format",
        EXIT_CONFLICT,
        "Prefix COLA (no separator, 2 letters, 4 digits) would write IDs of COL (no "
        "separator, 3 letters, 4 digits), such as COLAAA0001: give one of them a separator "
        "or other widths",
        AmbiguousFormatError,
    ),
    ProblemKind(
        "sequence-limit",
        409,
        "Sequence limit reached",
        EXIT_CONFLICT,
        "The service already holds 100,000 sequences, its limit; CUS is not created",
        LimitReachedError,
    ),
    ProblemKind(
        "conflict",
        409,
        "Conflict",
        EXIT_CONFLICT,
        "Prefix CUS cannot issue 10 more IDs: it would pass the last ID a sequence can reach",
        ConflictError,
    ),
    ProblemKind(
        "unauthorized",
        401,
        "Unauthorized",
        EXIT_ACCESS,
        "Missing bearer token: send 'Authorization: Bearer <API key>'",
        NotAuthenticatedError,
    ),
    ProblemKind(
        "forbidden",
        403,
        "Forbidden",
        EXIT_ACCESS,
        "This operation needs the 'admin' role; the key has 'read'",
        ForbiddenError,
    ),
    ProblemKind(
        "sequence-busy",
        503,
        "Sequence busy",
        EXIT_BUSY,
        "The sequence is busy: another transaction holds it past the wait allowed; "
        "nothing was allocated, try again shortly.",
        BusyError,
        retry_after=1,
    ),
    ProblemKind(
        "storage-unavailable",
        503,
        "Database unavailable",
        EXIT_ERROR,
        "The database is unavailable; try again shortly.",
        StorageError,
        retry_after=1,
    ),
    # Problems of HTTP requests, before any domain operation runs.
    ProblemKind("bad-json", 400, "Malformed JSON", EXIT_INPUT, "The body is not valid JSON"),
    ProblemKind(
        "validation-error",
        422,
        "Invalid request",
        EXIT_INPUT,
        "query.count: Input should be greater than or equal to 1",
    ),
    ProblemKind(
        "body-too-large",
        413,
        "Request body too large",
        EXIT_INPUT,
        "The request body must not exceed 65,536 bytes",
    ),
    ProblemKind(
        "host-not-allowed",
        400,
        "Host not allowed",
        EXIT_INPUT,
        "Host 'rebind.attacker.example' is not one this service answers to "
        "(IDMANAGER_ALLOWED_HOSTS)",
    ),
    ProblemKind(
        "unsupported-media-type",
        415,
        "Unsupported media type",
        EXIT_INPUT,
        "Send JSON bodies as application/json; form and text bodies are refused",
    ),
    ProblemKind(
        "cross-site-request",
        403,
        "Cross-site request refused",
        EXIT_ACCESS,
        "A change requested from another site's page (Origin https://evil.example) is refused",
    ),
    ProblemKind(
        "loopback-only",
        403,
        "Loopback only",
        EXIT_ACCESS,
        "No API keys are configured: this service answers its own machine only",
    ),
    ProblemKind(
        "internal-error",
        500,
        "Internal Server Error",
        EXIT_ERROR,
        "An unexpected error occurred; it has been logged.",
    ),
)

_BY_KIND = {kind.kind: kind for kind in KINDS}
_DOMAIN = tuple(kind for kind in KINDS if kind.error is not None)
# What an unknown problem with a known status means: the most general kind of that status.
# Not 404: a wrong URL, or a proxy's page, is not a missing prefix.
_BY_STATUS = {kind.status: kind for kind in _DOMAIN if kind.status != 404}


def kind(name: str) -> ProblemKind:
    """Return the kind named ``name`` (``"prefix-not-found"``)."""
    return _BY_KIND[name]


def kind_of(error: BaseException) -> ProblemKind:
    """Return the kind of an error; anything unexpected is an internal error."""
    for found in _DOMAIN:
        assert found.error is not None
        if isinstance(error, found.error):
            return found
    return _BY_KIND["internal-error"]


def error_for(problem_type: str, status: int, detail: str) -> IdManagerError | None:
    """Return the library's exception for a problem read back, or None if none fits."""
    found = _BY_KIND.get(problem_type.removeprefix(TYPE_PREFIX)) if problem_type else None
    if found is None or found.error is None:
        found = _BY_STATUS.get(status)
        if found is None and status in (400, 413, 422):
            found = kind("invalid-input")
    if found is None or found.error is None:
        return None
    return found.error(detail)
