"""IdManager: human-readable, sequential, never-repeating business IDs from a real database.

Names are imported on first use: ``import idmanager.client`` (which needs only httpx) then
loads no SQLAlchemy and no database driver.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it.
_EXPORTS = {
    "BlockCache": "application.block_cache",
    "CacheStats": "application.block_cache",
    "SyncBlockCache": "application.block_cache",
    "ServiceOptions": "application.options",
    "AuditPage": "application.results",
    "AuditRecord": "application.results",
    "HealthReport": "application.results",
    "ResetResult": "application.results",
    "SequenceStats": "application.results",
    "ServiceStats": "application.results",
    "IdManagerService": "application.service",
    "SyncIdManagerService": "application.service",
    "IdManagerUseCases": "application.use_cases",
    "SyncIdManagerUseCases": "application.use_cases",
    "connect": "compose",
    "IdManager": "domain.entity",
    "AccessDeniedError": "domain.errors",
    "AmbiguousFormatError": "domain.errors",
    "ForbiddenError": "domain.errors",
    "IdempotencyKeyReusedError": "domain.errors",
    "LimitReachedError": "domain.errors",
    "NotAuthenticatedError": "domain.errors",
    "BusyError": "domain.errors",
    "ConflictError": "domain.errors",
    "FormatLockedError": "domain.errors",
    "IdManagerError": "domain.errors",
    "InvalidCountError": "domain.errors",
    "InvalidFormatError": "domain.errors",
    "InvalidIdError": "domain.errors",
    "InvalidInputError": "domain.errors",
    "InvalidPrefixError": "domain.errors",
    "InvalidScopeError": "domain.errors",
    "PrefixInactiveError": "domain.errors",
    "PrefixNotFoundError": "domain.errors",
    "ResetRefusedError": "domain.errors",
    "StorageError": "domain.errors",
    "TransactionConflictError": "domain.errors",
    "DEFAULT_FORMAT": "domain.format",
    "IdFormat": "domain.format",
    "IdRange": "domain.format",
    "ParsedId": "domain.format",
    "format_id": "domain.format",
    "format_ids": "domain.format",
    "normalize_prefix": "domain.format",
    "parse_id": "domain.format",
    "AuditAction": "domain.repository",
    "IdGeneratorUtil": "facade",
    "IdPrefixes": "facade",
    "create_async_engine": "infrastructure.database",
    "create_engine": "infrastructure.database",
    "migrate": "infrastructure.migrate",
    "IdManagerRepositoryImpl": "infrastructure.repository",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'idmanager' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .application.block_cache import (
        BlockCache as BlockCache,
    )
    from .application.block_cache import (
        CacheStats as CacheStats,
    )
    from .application.block_cache import (
        SyncBlockCache as SyncBlockCache,
    )
    from .application.options import (
        ServiceOptions as ServiceOptions,
    )
    from .application.results import (
        AuditPage as AuditPage,
    )
    from .application.results import (
        AuditRecord as AuditRecord,
    )
    from .application.results import (
        HealthReport as HealthReport,
    )
    from .application.results import (
        ResetResult as ResetResult,
    )
    from .application.results import (
        SequenceStats as SequenceStats,
    )
    from .application.results import (
        ServiceStats as ServiceStats,
    )
    from .application.service import (
        IdManagerService as IdManagerService,
    )
    from .application.service import (
        SyncIdManagerService as SyncIdManagerService,
    )
    from .application.use_cases import (
        IdManagerUseCases as IdManagerUseCases,
    )
    from .application.use_cases import (
        SyncIdManagerUseCases as SyncIdManagerUseCases,
    )
    from .compose import (
        connect as connect,
    )
    from .domain.entity import (
        IdManager as IdManager,
    )
    from .domain.errors import (
        AccessDeniedError as AccessDeniedError,
    )
    from .domain.errors import (
        AmbiguousFormatError as AmbiguousFormatError,
    )
    from .domain.errors import (
        BusyError as BusyError,
    )
    from .domain.errors import (
        ConflictError as ConflictError,
    )
    from .domain.errors import (
        ForbiddenError as ForbiddenError,
    )
    from .domain.errors import (
        FormatLockedError as FormatLockedError,
    )
    from .domain.errors import (
        IdempotencyKeyReusedError as IdempotencyKeyReusedError,
    )
    from .domain.errors import (
        IdManagerError as IdManagerError,
    )
    from .domain.errors import (
        InvalidCountError as InvalidCountError,
    )
    from .domain.errors import (
        InvalidFormatError as InvalidFormatError,
    )
    from .domain.errors import (
        InvalidIdError as InvalidIdError,
    )
    from .domain.errors import (
        InvalidInputError as InvalidInputError,
    )
    from .domain.errors import (
        InvalidPrefixError as InvalidPrefixError,
    )
    from .domain.errors import (
        InvalidScopeError as InvalidScopeError,
    )
    from .domain.errors import (
        LimitReachedError as LimitReachedError,
    )
    from .domain.errors import (
        NotAuthenticatedError as NotAuthenticatedError,
    )
    from .domain.errors import (
        PrefixInactiveError as PrefixInactiveError,
    )
    from .domain.errors import (
        PrefixNotFoundError as PrefixNotFoundError,
    )
    from .domain.errors import (
        ResetRefusedError as ResetRefusedError,
    )
    from .domain.errors import (
        StorageError as StorageError,
    )
    from .domain.errors import (
        TransactionConflictError as TransactionConflictError,
    )
    from .domain.format import (
        DEFAULT_FORMAT as DEFAULT_FORMAT,
    )
    from .domain.format import (
        IdFormat as IdFormat,
    )
    from .domain.format import (
        IdRange as IdRange,
    )
    from .domain.format import (
        ParsedId as ParsedId,
    )
    from .domain.format import (
        format_id as format_id,
    )
    from .domain.format import (
        format_ids as format_ids,
    )
    from .domain.format import (
        normalize_prefix as normalize_prefix,
    )
    from .domain.format import (
        parse_id as parse_id,
    )
    from .domain.repository import (
        AuditAction as AuditAction,
    )
    from .facade import (
        IdGeneratorUtil as IdGeneratorUtil,
    )
    from .facade import (
        IdPrefixes as IdPrefixes,
    )
    from .infrastructure.database import (
        create_async_engine as create_async_engine,
    )
    from .infrastructure.database import (
        create_engine as create_engine,
    )
    from .infrastructure.migrate import (
        migrate as migrate,
    )
    from .infrastructure.repository import (
        IdManagerRepositoryImpl as IdManagerRepositoryImpl,
    )
