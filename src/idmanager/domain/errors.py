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


class StorageError(IdManagerError):
    """The database could not be reached or did not answer in time."""
