"""The error hierarchy. Every failure a user can cause or meet is one of these."""


class IdManagerError(Exception):
    """Base class of every error IdManager raises on purpose."""


class InvalidInputError(IdManagerError, ValueError):
    """Input that can never succeed: a bad prefix, ID, count or format."""


class InvalidPrefixError(InvalidInputError):
    """The prefix is empty, too long or has characters outside ``[A-Z0-9_]``."""


class InvalidScopeError(InvalidInputError):
    """The scope is too long or has characters outside letters, digits and ``_.:@-``."""


class InvalidIdError(InvalidInputError):
    """A text that cannot be read as an ID of the expected prefix and format."""


class InvalidCountError(InvalidInputError):
    """A count below 1 or above the configured maximum."""


class InvalidFormatError(InvalidInputError):
    """Format options that cannot describe a sequence."""


class IdempotencyKeyReusedError(InvalidInputError):
    """An ``Idempotency-Key`` sent again with another request than the one it was first used
    with."""


class PrefixNotFoundError(IdManagerError, LookupError):
    """The prefix has no sequence and the service does not create them on first use."""


class ConflictError(IdManagerError):
    """The request is valid but the sequence's state refuses it."""


class PrefixInactiveError(ConflictError):
    """The prefix is deactivated and refuses new IDs."""


class ResetRefusedError(ConflictError):
    """A reset would move the sequence backwards (and so re-issue IDs) without ``force``."""


class FormatLockedError(ConflictError):
    """A prefix's format cannot change once it has issued an ID."""


class AmbiguousFormatError(ConflictError):
    """Two sequences of one scope could write the same ID (prefixes without a separator)."""


class LimitReachedError(ConflictError):
    """The service holds as many sequences as it is configured to create."""


class AccessDeniedError(IdManagerError, PermissionError):
    """The caller may not do this: no valid credentials, or a role or scope too narrow."""


class NotAuthenticatedError(AccessDeniedError):
    """No credentials, or credentials that match no key."""


class ForbiddenError(AccessDeniedError):
    """Valid credentials whose role or scopes do not allow the operation."""


class BusyError(IdManagerError):
    """The sequence is busy: locked by another transaction past the wait allowed, or a
    concurrent transaction won a conflict. Nothing was allocated; retrying is safe.
    """


class TransactionConflictError(BusyError):
    """A concurrent transaction won a conflict (a deadlock, a serialization failure, a
    certification failure on a multi-master cluster) and this one was rolled back.
    """


class StorageError(IdManagerError):
    """The database could not be reached or failed."""
