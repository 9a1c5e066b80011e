"""IdManager: human-readable, sequential, never-repeating business IDs from a real database."""

from .application.block_cache import BlockCache, CacheStats, SyncBlockCache
from .application.service import IdManagerService, ResetResult, SyncIdManagerService
from .application.use_cases import IdManagerUseCases, SyncIdManagerUseCases
from .domain.entity import IdManager
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
from .domain.format import (
    DEFAULT_FORMAT,
    IdFormat,
    IdRange,
    ParsedId,
    format_id,
    format_ids,
    normalize_prefix,
    parse_id,
)
from .facade import IdGeneratorUtil, IdPrefixes
from .infrastructure.database import create_async_engine, create_engine
from .infrastructure.migrate import migrate
from .infrastructure.repository import IdManagerRepositoryImpl

__all__ = [
    "DEFAULT_FORMAT",
    "BlockCache",
    "CacheStats",
    "ConflictError",
    "FormatLockedError",
    "IdFormat",
    "IdGeneratorUtil",
    "IdManager",
    "IdManagerError",
    "IdManagerRepositoryImpl",
    "IdManagerService",
    "IdManagerUseCases",
    "IdPrefixes",
    "IdRange",
    "InvalidCountError",
    "InvalidFormatError",
    "InvalidIdError",
    "InvalidInputError",
    "InvalidPrefixError",
    "InvalidScopeError",
    "ParsedId",
    "PrefixInactiveError",
    "PrefixNotFoundError",
    "ResetRefusedError",
    "ResetResult",
    "StorageError",
    "SyncBlockCache",
    "SyncIdManagerService",
    "SyncIdManagerUseCases",
    "create_async_engine",
    "create_engine",
    "format_id",
    "format_ids",
    "migrate",
    "normalize_prefix",
    "parse_id",
]
