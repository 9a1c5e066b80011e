"""``IdManagerService``: the seed's operations over a repository, in the caller's transaction.

``SyncIdManagerService`` holds the logic and runs on a synchronous session;
``IdManagerService`` is the seed's async API over the same logic, run on an async session's
greenlet bridge (or directly, for a sync session).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..domain.entity import HEALTH_CHECK_PREFIX, IdManager, check_count
from ..domain.errors import (
    FormatLockedError,
    IdManagerError,
    InvalidInputError,
    InvalidPrefixError,
    InvalidScopeError,
    PrefixInactiveError,
    PrefixNotFoundError,
)
from ..domain.format import (
    DEFAULT_FORMAT,
    MAX_ORDINAL,
    IdFormat,
    IdRange,
    ParsedId,
    format_id,
    normalize_prefix,
    parse_id,
)
from ..domain.period import resolve_prefix
from ..domain.repository import AuditEntry, IdManagerRepository

P = ParamSpec("P")
T = TypeVar("T")

# The library allows large bulks: a million IDs cost one statement and ~0.1 s of formatting.
DEFAULT_MAX_COUNT = 10_000_000
MAX_SCOPE_LENGTH = 255
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.:@-]*")
_LEADING_PREFIX = re.compile(r"[A-Z0-9_]{1,255}")


@dataclass(frozen=True, slots=True)
class ResetResult:
    """What a reset did (or, for a dry run, would do)."""

    prefix: str
    scope: str
    previous_id: str | None
    latest_id: str | None
    next_id: str
    forced: bool
    dry_run: bool


def check_scope(scope: str) -> str:
    """Validate a scope (a tenant or company key; ``""`` by default)."""
    if not isinstance(scope, str):
        raise InvalidScopeError("Scope must be a string")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScopeError(f"Scope cannot exceed {MAX_SCOPE_LENGTH} characters")
    if not _SCOPE_RE.fullmatch(scope):
        raise InvalidScopeError("Scope can only contain letters, numbers, and the characters _.:@-")
    return scope


class SyncIdManagerService:
    """Sequence operations inside whatever transaction the repository's session is in.

    Nothing here commits: on rollback, allocated numbers are handed out again, so committed
    IDs have no gaps. The allocation locks the sequence's row until the transaction ends.
    """

    def __init__(
        self,
        repository: IdManagerRepository,
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        create_missing: bool = True,
        default_format: IdFormat = DEFAULT_FORMAT,
        actor: str | None = None,
        fiscal_year_start: int = 1,
    ) -> None:
        self.repository = repository
        self.fiscal_year_start = fiscal_year_start
        self.max_count = max_count
        self.create_missing = create_missing
        self.default_format = default_format
        self.actor = actor

    def _key(self, prefix: str, scope: str, on: date | None = None) -> tuple[str, str]:
        value = resolve_prefix(prefix, on, fiscal_year_start=self.fiscal_year_start)
        if value == HEALTH_CHECK_PREFIX:
            raise InvalidPrefixError(
                f"Prefix {HEALTH_CHECK_PREFIX} is reserved for the health check"
            )
        return check_scope(scope), value

    def generate_range(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        """Allocate ``count`` consecutive IDs in one statement and return them, lazily.

        ``prefix`` may be a period template (``INV{YYYY}``), resolved from ``on``, the
        document's date (default: today, UTC).
        """
        scope, prefix = self._key(prefix, scope, on)
        check_count(count, self.max_count)
        manager = self.repository.allocate(
            scope, prefix, count, create=self.create_missing, fmt=self.default_format
        )
        if manager is None:
            raise self._refusal(scope, prefix)
        return manager.issued(count)

    def _refusal(self, scope: str, prefix: str) -> IdManagerError:
        """Explain why an allocation returned nothing (off the fast path)."""
        existing = self.repository.get(scope, prefix)
        where = f" in scope {scope!r}" if scope else ""
        if existing is None:
            return PrefixNotFoundError(f"Prefix {prefix}{where} is not registered")
        return PrefixInactiveError(f"Prefix {prefix}{where} is inactive and issues no new IDs")

    def generate_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str:
        """Allocate the next ID of ``prefix``."""
        return self.generate_range(prefix, 1, scope=scope, on=on)[0]

    def bulk_generate_ids(
        self, prefix: str, count: int, *, scope: str = "", on: date | None = None
    ) -> list[str]:
        """Allocate ``count`` consecutive IDs in one statement."""
        return self.generate_range(prefix, count, scope=scope, on=on)[:]

    def _get(
        self, prefix: str, scope: str, on: date | None, *, for_update: bool = False
    ) -> IdManager:
        scope, prefix = self._key(prefix, scope, on)
        manager = self.repository.get(scope, prefix, for_update=for_update)
        if manager is None:
            where = f" in scope {scope!r}" if scope else ""
            raise PrefixNotFoundError(f"Prefix {prefix}{where} does not exist")
        return manager

    def get_current_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str | None:
        """Return the latest ID issued, or None if the prefix has issued none (or is unknown)."""
        scope, prefix = self._key(prefix, scope, on)
        manager = self.repository.get(scope, prefix)
        return manager.latest_id if manager else None

    def reset_sequence(
        self,
        prefix: str,
        reset_to: str | None = None,
        force: bool = False,
        *,
        scope: str = "",
        on: date | None = None,
        dry_run: bool = False,
    ) -> ResetResult:
        """Make ``reset_to`` the latest ID (None: start over), refusing to go backwards unforced.

        Resetting an unknown prefix creates it. Every reset is audited.
        """
        scope, prefix = self._key(prefix, scope, on)

        def target_of(manager: IdManager) -> int:
            return manager.reset_target(reset_to, force=force)

        if dry_run:
            manager = self.repository.get(scope, prefix) or IdManager(
                prefix, scope, format=self.default_format
            )
        else:
            manager = self._locked(scope, prefix, self.default_format, target_of)
        previous, previous_id = manager.last_value, manager.latest_id
        manager.last_value = target_of(manager)
        forced = manager.last_value < previous
        if not dry_run:
            self.repository.update(manager)
            self.repository.add_audit(
                AuditEntry(
                    scope,
                    prefix,
                    "reset",
                    previous,
                    manager.last_value,
                    self.actor,
                    "forced" if forced else None,
                )
            )
        return ResetResult(
            prefix, scope, previous_id, manager.latest_id, manager.next_id, forced, dry_run
        )

    def _locked(
        self, scope: str, prefix: str, fmt: IdFormat, validate: Callable[[IdManager], object]
    ) -> IdManager:
        """Return the sequence locked until the transaction ends, creating it if missing.

        A missing sequence is created only once ``validate`` accepts the change on a fresh one,
        so that a refused change leaves nothing behind.
        """
        manager = self.repository.get(scope, prefix, for_update=True)
        if manager is None:
            validate(IdManager(prefix, scope, format=fmt))
            self.repository.ensure(scope, prefix, fmt, self.actor)
            manager = self.repository.get(scope, prefix, for_update=True)
            assert manager is not None, "ensure() creates the missing sequence"
        return manager

    def get_all_prefixes(
        self,
        *,
        scope: str | None = None,
        skip: int = 0,
        limit: int = 100,
        active_only: bool = False,
    ) -> list[IdManager]:
        """Return the sequences, ordered by scope and prefix."""
        if not (0 <= skip <= MAX_ORDINAL and 0 <= limit <= MAX_ORDINAL):
            raise InvalidInputError(f"skip and limit must be between 0 and {MAX_ORDINAL}")
        if scope is not None:
            check_scope(scope)
        return self.repository.list(scope=scope, skip=skip, limit=limit, active_only=active_only)

    def _set_active(self, prefix: str, scope: str, on: date | None, active: bool) -> IdManager:
        manager = self._get(prefix, scope, on, for_update=True)
        if manager.is_active != active:
            manager.is_active = active
            self.repository.update(manager)
            action = "activate" if active else "deactivate"
            self.repository.add_audit(
                AuditEntry(manager.scope, manager.prefix, action, None, None, self.actor)
            )
        return manager

    def activate_prefix(self, prefix: str, *, scope: str = "", on: date | None = None) -> IdManager:
        """Let ``prefix`` issue IDs again."""
        return self._set_active(prefix, scope, on, True)

    def deactivate_prefix(
        self, prefix: str, *, scope: str = "", on: date | None = None
    ) -> IdManager:
        """Make ``prefix`` refuse new IDs (its history is kept)."""
        return self._set_active(prefix, scope, on, False)

    def configure_prefix(
        self,
        prefix: str,
        *,
        scope: str = "",
        on: date | None = None,
        fmt: IdFormat | None = None,
        is_active: bool | None = None,
        latest_id: str | None = None,
        force: bool = False,
    ) -> IdManager:
        """Register ``prefix`` or change its format, state or starting point.

        The format is fixed once the prefix has issued an ID. ``latest_id`` moves the sequence
        as :meth:`reset_sequence` does, refusing to go backwards unless ``force``.
        """
        scope, prefix = self._key(prefix, scope, on)

        def apply(manager: IdManager) -> None:
            if fmt is not None and fmt != manager.format:
                if manager.last_value:
                    raise FormatLockedError(
                        f"Prefix {prefix} has issued IDs; its format can no longer change"
                    )
                manager.format = fmt
            if is_active is not None:
                manager.is_active = is_active
            if latest_id is not None:
                manager.last_value = manager.reset_target(latest_id, force=force)

        manager = self._locked(scope, prefix, fmt or self.default_format, apply)
        before = (manager.last_value, manager.is_active, manager.format)
        apply(manager)
        if (manager.last_value, manager.is_active, manager.format) != before:
            self.repository.update(manager)
            self.repository.add_audit(
                AuditEntry(
                    scope,
                    prefix,
                    "configure",
                    before[0],
                    manager.last_value,
                    self.actor,
                    f"active={manager.is_active} format={manager.format}",
                )
            )
            # Read back what the database now holds (its updated_at among it).
            return self.repository.get(scope, prefix) or manager
        return manager

    def get_prefix_stats(
        self, prefix: str, *, scope: str = "", on: date | None = None
    ) -> dict[str, Any]:
        """Return the statistics of one prefix; ``exists`` is False for an unknown one."""
        scope, prefix = self._key(prefix, scope, on)
        manager = self.repository.get(scope, prefix)
        if manager is None:
            return {
                "prefix": prefix,
                "scope": scope,
                "exists": False,
                "latest_id": None,
                "next_id": format_id(prefix, 1, self.default_format),
                "count_issued": 0,
            }
        return manager.stats()

    def release_range(self, prefix: str, first: int, last: int, *, scope: str = "") -> bool:
        """Hand back the unissued IDs ``first..last`` if they are still the sequence's latest.

        Only the block cache calls this, for IDs it reserved and never handed out. Nothing
        moves if any allocation happened after ``last``.
        """
        scope, prefix = self._key(prefix, scope)
        if not 1 <= first <= last:
            raise InvalidInputError(f"Invalid range to hand back: {first}..{last}")
        released = self.repository.release(scope, prefix, expected=last, new=first - 1)
        if released:
            self.repository.add_audit(
                AuditEntry(scope, prefix, "release", last, first - 1, self.actor, "block cache")
            )
        return released

    def read_id(self, text: str, *, scope: str = "", prefix: str | None = None) -> ParsedId:
        """Parse ``text`` leniently, in the stored format of its prefix (default otherwise).

        ``prefix`` is the expected prefix, needed for formats without a separator.
        """
        scope = check_scope(scope)
        if prefix is None:
            # Prefix characters never occur in a separator: the leading run is the prefix.
            leading = _LEADING_PREFIX.match(text.strip().upper()) if isinstance(text, str) else None
            candidate = leading.group() if leading else ""
        else:
            candidate = normalize_prefix(prefix)
        manager = self.repository.get(scope, candidate) if candidate else None
        fmt = manager.format if manager is not None else self.default_format
        return parse_id(text, lenient=True, fmt=fmt, prefix=candidate if prefix else None)

    def get_service_stats(self, *, scope: str | None = None) -> dict[str, int]:
        """Return how many prefixes exist and how many IDs they have issued in all."""
        prefix_count, total = self.repository.totals(scope=scope)
        return {"prefix_count": prefix_count, "total_issued": total}

    def health_check(self) -> dict[str, Any]:
        """Exercise a real allocation, undo it, and report in the seed's shape."""
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            ordinal = self.repository.probe(HEALTH_CHECK_PREFIX, DEFAULT_FORMAT)
            prefix_count, _ = self.repository.totals(scope=None)
        except IdManagerError as exc:
            return {
                "status": "unhealthy",
                "message": f"ID Manager service error: {exc}",
                "prefix_count": None,
                "test_id_generated": None,
                "error_type": type(exc).__name__,
                "timestamp": timestamp,
            }
        return {
            "status": "healthy",
            "message": "ID Manager service is operational",
            "prefix_count": prefix_count,
            "test_id_generated": format_id(HEALTH_CHECK_PREFIX, ordinal),
            "timestamp": timestamp,
        }


def _bridged(
    method: Callable[Concatenate[SyncIdManagerService, P], T],
) -> Callable[Concatenate[IdManagerService, P], Coroutine[Any, Any, T]]:
    """Return an async twin of a ``SyncIdManagerService`` method (same name, same arguments)."""

    async def call(self: IdManagerService, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.repository.run(partial(method, self.sync, *args, **kwargs))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class IdManagerService:
    """The seed's async service: ``await service.generate_id("PUR")``.

    Runs in the transaction of the repository's session and never commits it. Takes the same
    options as :class:`SyncIdManagerService`, which :attr:`sync` exposes.
    """

    def __init__(self, repository: IdManagerRepository, **options: Any) -> None:
        self.repository = repository
        self.sync = SyncIdManagerService(repository, **options)

    generate_id = _bridged(SyncIdManagerService.generate_id)
    generate_range = _bridged(SyncIdManagerService.generate_range)
    bulk_generate_ids = _bridged(SyncIdManagerService.bulk_generate_ids)
    get_current_id = _bridged(SyncIdManagerService.get_current_id)
    reset_sequence = _bridged(SyncIdManagerService.reset_sequence)
    get_all_prefixes = _bridged(SyncIdManagerService.get_all_prefixes)
    activate_prefix = _bridged(SyncIdManagerService.activate_prefix)
    deactivate_prefix = _bridged(SyncIdManagerService.deactivate_prefix)
    configure_prefix = _bridged(SyncIdManagerService.configure_prefix)
    get_prefix_stats = _bridged(SyncIdManagerService.get_prefix_stats)
    get_service_stats = _bridged(SyncIdManagerService.get_service_stats)
    read_id = _bridged(SyncIdManagerService.read_id)
    health_check = _bridged(SyncIdManagerService.health_check)
