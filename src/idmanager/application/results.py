"""What crosses the application boundary: frozen dataclasses, one shape per result.

The HTTP service answers with them (their attribute docstrings become the OpenAPI
descriptions), the command line prints them, and the Python client reads them back with
:func:`from_json`: a new field is one change here.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from functools import cache
from typing import Any, ClassVar, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from ..domain.entity import IdManager
from ..domain.format import IdFormat, format_id
from ..domain.repository import AuditAction

T = TypeVar("T")
# Attribute docstrings become field descriptions in the OpenAPI document.
_DOCUMENTED: dict[str, Any] = {"use_attribute_docstrings": True}


@dataclass(frozen=True, slots=True)
class SequenceStats:
    """The state and statistics of one sequence."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    prefix: str
    """The normalised prefix."""
    scope: str
    """The tenant or company the sequence belongs to ('' for none)."""
    exists: bool
    """Whether the sequence exists (statistics of an unknown prefix say what it would be)."""
    latest_id: str | None
    """The last ID issued; null when none yet."""
    next_id: str
    """The ID the next allocation issues."""
    count_issued: int
    """How many IDs the sequence has issued (its counter, ``last_value``)."""
    is_active: bool
    """Inactive prefixes refuse new IDs."""
    format: IdFormat
    """How the IDs are written; fixed once the sequence has issued an ID."""
    template: str | None
    """The period template that created this sequence (``INV{YYYY}``), if any."""
    created_at: datetime | None
    """When the sequence was created (UTC)."""
    updated_at: datetime | None
    """When it last changed (UTC)."""
    created_by: str | None
    """Who created it: an API key's name, an operator, or null when unknown."""
    width_usage: float
    """Share of the current letter width already issued (0 to 1)."""
    warning: str | None
    """Set when the letter width is nearly used up."""

    @classmethod
    def of(cls, manager: IdManager) -> SequenceStats:
        """Return the statistics of an existing sequence."""
        return cls(
            prefix=manager.prefix,
            scope=manager.scope,
            exists=True,
            latest_id=manager.latest_id,
            next_id=manager.next_id,
            count_issued=manager.last_value,
            is_active=manager.is_active,
            format=manager.format,
            template=manager.template,
            created_at=manager.created_at,
            updated_at=manager.updated_at,
            created_by=manager.created_by,
            width_usage=manager.width_usage(),
            warning=manager.width_warning(),
        )

    @classmethod
    def missing(cls, prefix: str, scope: str, fmt: IdFormat) -> SequenceStats:
        """Return what an unknown sequence would be: nothing issued, its first ID next."""
        return cls.of(IdManager(prefix, scope, format=fmt)).replace(exists=False)

    def replace(self, **changes: Any) -> SequenceStats:
        """Return a copy with ``changes``."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """How many sequences exist and how many IDs they have issued in all."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    prefix_count: int
    """Number of sequences (the health check's own is not counted)."""
    total_issued: int
    """IDs issued by all of them."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The health check, in the shape the seed documents (``report["status"]`` works too)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    status: str
    """'healthy' or 'unhealthy'."""
    message: str
    """'ID Manager service is operational', or what failed."""
    timestamp: str
    """When the check ran: ISO-8601, UTC."""
    prefix_count: int | None = None
    """Number of user prefixes; null when unhealthy."""
    test_id_generated: str | None = None
    """The ID the check allocated and rolled back; null when unhealthy."""
    error_type: str | None = None
    """The kind of failure, when unhealthy."""

    @property
    def healthy(self) -> bool:
        """Return True when the check passed."""
        return self.status == "healthy"

    def __getitem__(self, key: str) -> Any:
        # The seed returned a dict: its callers read report["status"].
        if key not in _field_names(HealthReport):
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True, slots=True)
class ResetResult:
    """What a reset did (or, for a dry run, would do)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    prefix: str
    """The normalised prefix."""
    scope: str
    """The tenant or company ('' for none)."""
    previous_id: str | None
    """The latest ID before the reset; null when none had been issued."""
    latest_id: str | None
    """The latest ID after the reset; null when the sequence starts over."""
    next_id: str
    """The ID the next allocation issues."""
    forced: bool
    """Whether the reset moved the sequence backwards (allowed only with force)."""
    dry_run: bool
    """True when nothing was changed."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One change of a sequence, as the audit trail recorded it."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    id: int
    """The entry's number; later entries have higher numbers."""
    at: datetime
    """When the change was made (UTC)."""
    scope: str
    """The sequence's tenant or company ('' for none)."""
    prefix: str
    """The sequence's prefix."""
    action: AuditAction
    """What was done: create, register, configure, reset, activate, deactivate, import or
    release."""
    actor: str | None
    """Who did it: an API key's name, an operator (user@host), or null when unknown."""
    old_value: int | None
    """The counter (IDs issued) before the change, where it applies."""
    new_value: int | None
    """The counter after the change, where it applies."""
    old_id: str | None
    """The latest ID before the change, where there was one."""
    new_id: str | None
    """The latest ID after the change, where there is one."""
    detail: str | None
    """More about the change: the format registered, what a configuration changed."""

    @classmethod
    def of(
        cls,
        *,
        id: int,
        at: datetime,
        scope: str,
        prefix: str,
        action: AuditAction,
        actor: str | None,
        old_value: int | None,
        new_value: int | None,
        detail: str | None,
        fmt: IdFormat,
    ) -> AuditRecord:
        """Return a record, writing its counters as the IDs they stand for."""
        return cls(
            id,
            at,
            scope,
            prefix,
            action,
            actor,
            old_value,
            new_value,
            format_id(prefix, old_value, fmt) if old_value else None,
            format_id(prefix, new_value, fmt) if new_value else None,
            detail,
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of the audit trail, newest first."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _DOCUMENTED

    items: list[AuditRecord]
    """The entries of this page, newest first."""
    next_cursor: int | None
    """Pass it as ``before`` to read the next (older) page; null on the last page."""


# -- JSON ------------------------------------------------------------------------------------


@cache
def _field_names(cls: Any) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return get_type_hints(cls)


def to_json(value: Any) -> Any:
    """Return ``value`` (a result, or anything inside one) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        # As the HTTP service writes them (pydantic): UTC as "Z".
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build the result ``cls`` from JSON data, ignoring fields it does not know.

    The reverse of :func:`to_json`; a client reading a newer server's answer skips what
    it has no field for.
    """
    key = cast(Hashable, cls)
    hints = _hints(key)
    known = {name: _convert(hints[name], data[name]) for name in _field_names(key) if name in data}
    return cls(**known)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        inner = [arg for arg in get_args(hint) if arg is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        (item,) = get_args(hint)
        return [_convert(item, v) for v in value]
    if hint is datetime:
        return datetime.fromisoformat(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    return value
