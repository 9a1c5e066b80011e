"""``IdManagerService``: the seed's operations over a repository, in the caller's transaction.

``SyncIdManagerService`` holds the logic and runs on a synchronous session;
``IdManagerService`` is the seed's async API over the same logic, run on an async session's
greenlet bridge (or directly, for a sync session).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime
from functools import lru_cache, partial
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..domain.entity import HEALTH_CHECK_PREFIX, IdManager, check_count
from ..domain.errors import (
    AmbiguousFormatError,
    ConflictError,
    FormatLockedError,
    IdManagerError,
    InvalidInputError,
    InvalidPrefixError,
    InvalidScopeError,
    LimitReachedError,
    PrefixInactiveError,
    PrefixNotFoundError,
)
from ..domain.format import (
    DEFAULT_FORMAT,
    MAX_ORDINAL,
    IdFormat,
    IdRange,
    ParsedId,
    collision,
    format_id,
    normalize_prefix,
    parse_id,
)
from ..domain.period import is_template, normalize_template, resolve_prefix
from ..domain.repository import (
    AuditAction,
    AuditEntry,
    AuditQuery,
    IdManagerRepository,
    SequenceQuery,
)
from .options import DEFAULT_OPTIONS, ServiceOptions
from .results import AuditPage, AuditRecord, HealthReport, ResetResult, SequenceStats, ServiceStats

P = ParamSpec("P")
T = TypeVar("T")

MAX_SCOPE_LENGTH = 255
MAX_PAGE = 1000
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.:@-]*")
_LEADING_PREFIX = re.compile(r"[A-Z0-9_]{1,255}")

Key = tuple[str, str]  # (scope, resolved prefix)


def check_scope(scope: str) -> str:
    """Validate a scope (a tenant or company key; ``""`` by default)."""
    if not isinstance(scope, str):
        raise InvalidScopeError("Scope must be a string")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidScopeError(f"Scope cannot exceed {MAX_SCOPE_LENGTH} characters")
    if not _SCOPE_RE.fullmatch(scope):
        raise InvalidScopeError("Scope can only contain letters, numbers, and the characters _.:@-")
    return scope


def sequence_key(
    prefix: str, scope: str, on: date | None, options: ServiceOptions = DEFAULT_OPTIONS
) -> Key:
    """Return the validated ``(scope, prefix)`` of a sequence, resolving a template.

    Raises:
        InvalidPrefixError, InvalidScopeError: naming what is wrong.
    """
    if isinstance(prefix, str) and isinstance(scope, str) and not is_template(prefix):
        return _plain_key(prefix, scope)  # no date in it: the same answer every time
    window = options.period_window_days
    if on is not None and window is not None and is_template(prefix):
        distance = abs((_day(on) - datetime.now(UTC).date()).days)
        if distance > window:
            raise InvalidInputError(
                f"Date {_day(on).isoformat()} is {distance:,} days from today; documents "
                f"may be dated at most {window:,} days before or after today"
            )
    return _checked(resolve_prefix(prefix, on, fiscal_year_start=options.fiscal_year_start), scope)


@lru_cache(maxsize=4096)
def _plain_key(prefix: str, scope: str) -> Key:
    """The key of a prefix without date tokens, the same every time (errors are raised, and
    not cached)."""
    return _checked(normalize_prefix(prefix), scope)


def _checked(value: str, scope: str) -> Key:
    if value == HEALTH_CHECK_PREFIX:
        raise InvalidPrefixError(f"Prefix {HEALTH_CHECK_PREFIX} is reserved for the health check")
    return check_scope(scope), value


def _day(on: date) -> date:
    return on.date() if isinstance(on, datetime) else on


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


def describe_format(prefix: str, fmt: IdFormat) -> str:
    """Return a format in words, with its first ID: for the audit trail and the console."""
    letters = _count(fmt.letter_width, "letter") if fmt.letter_width else "no letters"
    return (
        f"first ID {format_id(prefix, 1, fmt)} (separator {fmt.separator!r}, {letters}, "
        f"{_count(fmt.digit_width, 'digit')})"
    )


def _where(scope: str) -> str:
    return f" in scope {scope!r}" if scope else ""


class SyncIdManagerService:
    """Sequence operations inside whatever transaction the repository's session is in.

    Nothing here commits: on rollback, allocated numbers are handed out again, so committed
    IDs have no gaps. The allocation locks the sequence's row until the transaction ends.
    """

    def __init__(
        self, repository: IdManagerRepository, options: ServiceOptions = DEFAULT_OPTIONS
    ) -> None:
        self.repository = repository
        self.options = options

    # -- keys -------------------------------------------------------------------------------

    def key(self, prefix: str, scope: str = "", on: date | None = None) -> Key:
        """Return the validated ``(scope, prefix)`` of a sequence, resolving a template."""
        return sequence_key(prefix, scope, on, self.options)

    def waiting(self) -> AbstractContextManager[None]:
        """Wait at most the options' ``lock_timeout_ms`` for a sequence's lock in here."""
        timeout = self.options.lock_timeout_ms
        return nullcontext() if timeout is None else self.repository.waiting_at_most(timeout)

    # -- allocation -------------------------------------------------------------------------

    def generate_range(
        self, prefix: str, count: int = 1, *, scope: str = "", on: date | None = None
    ) -> IdRange:
        """Allocate ``count`` consecutive IDs in one statement and return them, lazily.

        ``prefix`` may be a period template (``INV{YYYY}``), resolved from ``on``, the
        document's date (default: today, UTC). An unknown prefix is created (and audited)
        unless the options say not to.
        """
        key = self.key(prefix, scope, on)
        check_count(count, self.options.max_count)
        with self.waiting():
            if self.options.create_missing and self.repository.creates_while_allocating():
                manager = self._allocate_creating(key, count, prefix)
            else:
                found = self.repository.allocate(*key, count)
                manager = found or self._create_on_first_use(key, count, prefix)
        return manager.issued(count)

    def _refusal(self, key: Key, count: int) -> IdManagerError:
        """Explain why an existing sequence refused an allocation (off the fast path)."""
        scope, name = key
        # A locking read: it sees the latest committed state, as the refused write did (a
        # plain read could see an older snapshot, where the sequence was still active).
        existing = self.repository.get(scope, name, for_update=True)
        if existing is None:
            return PrefixNotFoundError(f"Prefix {name}{_where(scope)} is not registered")
        if not existing.is_active:
            return PrefixInactiveError(
                f"Prefix {name}{_where(scope)} is inactive and issues no new IDs"
            )
        return ConflictError(
            f"Prefix {name} cannot issue {count:,} more IDs: it would pass the last ID a "
            f"sequence can reach (ordinal {MAX_ORDINAL:,})"
        )

    def _new(self, key: Key, count: int, prefix: str) -> IdManager:
        """Return the sequence a first allocation creates, with ``count`` IDs issued."""
        return IdManager(
            key[1],
            key[0],
            last_value=count,
            format=self.options.default_format,
            created_by=self.options.actor,
            template=normalize_template(prefix) if is_template(prefix) else None,
        )

    def _create_on_first_use(self, key: Key, count: int, prefix: str) -> IdManager:
        """Create the sequence with ``count`` IDs issued, or say why it issues none."""
        if not self.options.create_missing:
            raise self._refusal(key, count)
        new = self._new(key, count, prefix)
        self._check_new(new)
        created = self.repository.insert(new)
        if created is None:
            # It exists: inactive, full, or created by another transaction since our try.
            manager = self.repository.allocate(*key, count)
            if manager is None:
                raise self._refusal(key, count)
            return manager
        self._audit_creation(created, count)
        return created

    def _allocate_creating(self, key: Key, count: int, prefix: str) -> IdManager:
        """Allocate, creating a missing sequence in the same statement; check it after.

        A refused creation then leaves the row in the transaction, which must be rolled
        back (the use cases roll back on any error).
        """
        manager, created = self.repository.allocate_or_create(self._new(key, count, prefix), count)
        if manager is None:
            raise self._refusal(key, count)
        if created:
            self._check_new(manager, created=True)
            self._audit_creation(manager, count)
        return manager

    def _audit_creation(self, manager: IdManager, count: int) -> None:
        detail = f"created on first use, {describe_format(manager.prefix, manager.format)}"
        self._audit(manager, AuditAction.CREATE, None, count, detail)

    def generate_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str:
        """Allocate the next ID of ``prefix``."""
        return self.generate_range(prefix, 1, scope=scope, on=on)[0]

    def bulk_generate_ids(
        self, prefix: str, count: int, *, scope: str = "", on: date | None = None
    ) -> list[str]:
        """Allocate ``count`` consecutive IDs in one statement."""
        return self.generate_range(prefix, count, scope=scope, on=on)[:]

    def release_range(self, prefix: str, first: int, last: int, *, scope: str = "") -> bool:
        """Hand back the unissued IDs ``first..last`` if they are still the sequence's latest.

        Only the block cache calls this, for IDs it reserved and never handed out. Nothing
        moves if any allocation happened after ``last``.
        """
        scope, prefix = self.key(prefix, scope)
        if not 1 <= first <= last:
            raise InvalidInputError(f"Invalid range to hand back: {first}..{last}")
        released = self.repository.release(scope, prefix, expected=last, new=first - 1)
        if released:
            self.repository.add_audit(
                AuditEntry(
                    scope,
                    prefix,
                    AuditAction.RELEASE,
                    last,
                    first - 1,
                    self.options.actor,
                    "block cache",
                )
            )
        return released

    # -- reading ----------------------------------------------------------------------------

    def _get(self, key: Key, *, for_update: bool = False) -> IdManager:
        scope, prefix = key
        manager = self.repository.get(scope, prefix, for_update=for_update)
        if manager is None:
            raise PrefixNotFoundError(f"Prefix {prefix}{_where(scope)} does not exist")
        return manager

    def get_current_id(self, prefix: str, *, scope: str = "", on: date | None = None) -> str | None:
        """Return the latest ID issued, or None if the prefix has issued none (or is unknown)."""
        scope, prefix = self.key(prefix, scope, on)
        manager = self.repository.get(scope, prefix)
        return manager.latest_id if manager else None

    def get_prefix_stats(
        self, prefix: str, *, scope: str = "", on: date | None = None
    ) -> SequenceStats:
        """Return the statistics of one prefix; ``exists`` is False for an unknown one."""
        scope, prefix = self.key(prefix, scope, on)
        manager = self.repository.get(scope, prefix)
        if manager is None:
            return SequenceStats.missing(prefix, scope, self.options.default_format)
        return SequenceStats.of(manager)

    def get_all_prefixes(
        self,
        *,
        scope: str | None = None,
        skip: int = 0,
        limit: int = 100,
        active_only: bool = False,
        active: bool | None = None,
        search: str | None = None,
        template: str | None = None,
        scopes: tuple[str, ...] | None = None,
    ) -> list[IdManager]:
        """Return the sequences, ordered by scope and prefix.

        ``active`` keeps only active (True) or inactive (False) ones; ``active_only`` is the
        seed's spelling of ``active=True``. ``search`` keeps prefixes containing it;
        ``template`` the periods of one template (``INV{YYYY}``); ``scopes`` the scopes that
        match one of its patterns (``*`` and ``?``).
        """
        if not (0 <= skip <= MAX_ORDINAL and 0 <= limit <= MAX_ORDINAL):
            raise InvalidInputError(f"skip and limit must be between 0 and {MAX_ORDINAL}")
        if scope is not None:
            check_scope(scope)
        query = SequenceQuery(
            scope=scope,
            scopes=scopes,
            active=True if active_only else active,
            search=search.strip().upper() if search and search.strip() else None,
            template=normalize_template(template) if template else None,
            skip=skip,
            limit=limit,
        )
        return self.repository.list_sequences(query)

    def get_service_stats(self, *, scope: str | None = None) -> ServiceStats:
        """Return how many prefixes exist and how many IDs they have issued in all."""
        return ServiceStats(*self.repository.totals(scope=scope))

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
        fmt = manager.format if manager is not None else self.options.default_format
        return parse_id(text, lenient=True, fmt=fmt, prefix=candidate if prefix else None)

    def list_audit(
        self,
        *,
        scope: str | None = None,
        prefix: str | None = None,
        actor: str | None = None,
        action: AuditAction | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
        scopes: tuple[str, ...] | None = None,
    ) -> AuditPage:
        """Return the audit trail, newest first, a page at a time.

        Every filter is optional (``scopes``: patterns of ``*`` and ``?``, one of which the
        scope must match); pass the page's ``next_cursor`` as ``before`` for the next.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if before is not None and not 1 <= before <= MAX_ORDINAL:
            raise InvalidInputError(
                f"before must be an entry number between 1 and {MAX_ORDINAL}, got {before}"
            )
        since, until = _utc(since, "since"), _utc(until, "until")
        try:
            kind = AuditAction(action) if action is not None else None
        except ValueError:
            choices = ", ".join(a.value for a in AuditAction)
            raise InvalidInputError(f"Unknown action {action!r}; use one of {choices}") from None
        query = AuditQuery(
            scope=check_scope(scope) if scope is not None else None,
            scopes=scopes,
            prefix=resolve_prefix(prefix, fiscal_year_start=self.options.fiscal_year_start)
            if prefix
            else None,
            actor=actor or None,
            action=kind,
            since=since,
            until=until,
            before=before,
            limit=limit + 1,  # one more tells whether another page follows
        )
        rows = self.repository.list_audit(query)
        page = [
            AuditRecord.of(
                id=row.id,
                at=row.at,
                scope=row.entry.scope,
                prefix=row.entry.prefix,
                action=row.entry.action,
                actor=row.entry.actor,
                old_value=row.entry.old_value,
                new_value=row.entry.new_value,
                detail=row.entry.detail,
                fmt=row.format,
            )
            for row in rows[:limit]
        ]
        return AuditPage(page, page[-1].id if len(rows) > limit else None)

    # -- changes ----------------------------------------------------------------------------

    def _audit(
        self,
        manager: IdManager,
        action: AuditAction,
        old: int | None,
        new: int | None,
        detail: str | None = None,
    ) -> None:
        self.repository.add_audit(
            AuditEntry(manager.scope, manager.prefix, action, old, new, self.options.actor, detail)
        )

    def _locked(
        self,
        key: Key,
        fmt: IdFormat,
        validate: Callable[[IdManager], object],
        template: str | None = None,
    ) -> IdManager:
        """Return the sequence locked until the transaction ends, registering it if missing.

        A missing sequence is created only once ``validate`` accepts the change on a fresh one,
        so that a refused change leaves nothing behind.
        """
        scope, prefix = key
        manager = self.repository.get(scope, prefix, for_update=True)
        if manager is None:
            fresh = IdManager(
                prefix, scope, format=fmt, created_by=self.options.actor, template=template
            )
            validate(fresh)
            self._check_new(fresh)
            if self.repository.insert(fresh) is not None:
                self._audit(fresh, AuditAction.REGISTER, None, 0, describe_format(prefix, fmt))
            manager = self.repository.get(scope, prefix, for_update=True)
            assert manager is not None, "the sequence was just created"
        return manager

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
        key = self.key(prefix, scope, on)

        def target_of(manager: IdManager) -> int:
            return manager.reset_target(reset_to, force=force)

        fmt = self.options.default_format
        if dry_run:
            manager = self.repository.get(*key) or IdManager(key[1], key[0], format=fmt)
        else:
            with self.waiting():
                manager = self._locked(key, fmt, target_of, _template_of(prefix))
        previous, previous_id = manager.last_value, manager.latest_id
        manager.last_value = target_of(manager)
        forced = manager.last_value < previous
        if not dry_run:
            self.repository.update(manager)
            self._audit(
                manager,
                AuditAction.RESET,
                previous,
                manager.last_value,
                "forced" if forced else None,
            )
        return ResetResult(
            manager.prefix,
            manager.scope,
            previous_id,
            manager.latest_id,
            manager.next_id,
            forced,
            dry_run,
        )

    def _set_active(self, prefix: str, scope: str, on: date | None, active: bool) -> IdManager:
        with self.waiting():
            manager = self._get(self.key(prefix, scope, on), for_update=True)
        if manager.is_active != active:
            manager.is_active = active
            self.repository.update(manager)
            action = AuditAction.ACTIVATE if active else AuditAction.DEACTIVATE
            self._audit(manager, action, None, None)
            # Read back what the database now holds (its updated_at among it).
            return self.repository.get(manager.scope, manager.prefix) or manager
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
        key = self.key(prefix, scope, on)

        def apply(manager: IdManager) -> None:
            if fmt is not None and fmt != manager.format:
                if manager.last_value:
                    raise FormatLockedError(
                        f"Prefix {manager.prefix} has issued IDs; its format can no longer change"
                    )
                manager.format = fmt
                self._check_unambiguous(manager)
            if is_active is not None:
                manager.is_active = is_active
            if latest_id is not None:
                manager.last_value = manager.reset_target(latest_id, force=force)

        with self.waiting():
            manager = self._locked(
                key, fmt or self.options.default_format, apply, _template_of(prefix)
            )
        return self._change(manager, apply, AuditAction.CONFIGURE)

    def import_sequence(
        self,
        prefix: str,
        latest_value: int,
        *,
        scope: str = "",
        is_active: bool = True,
        detail: str | None = None,
        fmt: IdFormat | None = None,
    ) -> IdManager:
        """Continue a sequence issued elsewhere: make ``latest_value`` its counter.

        A missing sequence is created with ``fmt`` (the IDs' format there; by default the
        service's default format); an existing one is moved forward, never backwards
        (``ResetRefusedError``). One audit entry either way.
        """
        key = self.key(prefix, scope)
        fmt = fmt or self.options.default_format
        manager = self.repository.get(*key, for_update=True)
        if manager is None:
            new = IdManager(
                key[1],
                key[0],
                last_value=latest_value,
                is_active=is_active,
                format=fmt,
                created_by=self.options.actor,
            )
            self._check_new(new)
            created = self.repository.insert(new)
            if created is not None:
                self._audit(created, AuditAction.IMPORT, None, latest_value, detail)
                return created
            manager = self._get(key, for_update=True)  # created meanwhile: move it instead

        def apply(manager: IdManager) -> None:
            if latest_value:
                shown = format_id(manager.prefix, latest_value, manager.format)
                manager.last_value = manager.reset_target(shown, force=False)
            manager.is_active = is_active

        return self._change(manager, apply, AuditAction.IMPORT, detail)

    def _check_new(self, manager: IdManager, *, created: bool = False) -> None:
        """Refuse a new sequence past the limit, or one whose IDs another could write.

        ``created``: the sequence is already among those counted.
        """
        limit = self.options.max_sequences
        if limit is not None and self.repository.totals(scope=None)[0] - created >= limit:
            raise LimitReachedError(
                f"The service already holds {limit:,} sequences, its limit; "
                f"{manager.prefix} is not created"
            )
        self._check_unambiguous(manager)

    def _check_unambiguous(self, manager: IdManager) -> None:
        """Refuse a format under which this sequence and another of its scope write one ID."""
        if manager.format.separator:
            return  # a separator marks where the prefix ends: nothing else can match
        for other in self.repository.overlapping(manager.scope, manager.prefix):
            same = collision(manager.prefix, manager.format, other.prefix, other.format)
            if same is not None:
                raise AmbiguousFormatError(
                    f"Prefix {manager.prefix} ({_shape(manager.format)}) would write IDs of "
                    f"{other.prefix} ({_shape(other.format)}), such as {same}: give one of "
                    "them a separator or other widths"
                )

    def _change(
        self,
        manager: IdManager,
        apply: Callable[[IdManager], None],
        action: AuditAction,
        note: str | None = None,
    ) -> IdManager:
        """Apply a change to a locked sequence; store and audit it if anything changed."""
        before = (manager.last_value, manager.is_active, manager.format)
        apply(manager)
        after = (manager.last_value, manager.is_active, manager.format)
        if after == before:
            return manager
        self.repository.update(manager)
        changes = [
            f"{name} {old} -> {new}"
            for name, old, new in zip(("counter", "active", "format"), before, after, strict=True)
            if old != new and name != "counter"
        ]
        if note:
            changes.append(note)
        self._audit(manager, action, before[0], manager.last_value, "; ".join(changes) or None)
        # Read back what the database now holds (its updated_at among it).
        return self.repository.get(manager.scope, manager.prefix) or manager

    # -- health -----------------------------------------------------------------------------

    def health_check(self) -> HealthReport:
        """Exercise a real allocation, undo it, and report in the seed's shape."""
        timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            ordinal = self.repository.probe(HEALTH_CHECK_PREFIX, DEFAULT_FORMAT)
            prefix_count, _ = self.repository.totals(scope=None)
        except IdManagerError as exc:
            return HealthReport(
                "unhealthy",
                f"ID Manager service error: {exc}",
                timestamp,
                error_type=type(exc).__name__,
            )
        return HealthReport(
            "healthy",
            "ID Manager service is operational",
            timestamp,
            prefix_count=prefix_count,
            test_id_generated=format_id(HEALTH_CHECK_PREFIX, ordinal),
        )


def _shape(fmt: IdFormat) -> str:
    separator = f"separator {fmt.separator!r}" if fmt.separator else "no separator"
    letters = _count(fmt.letter_width, "letter") if fmt.letter_width else "digits only"
    return f"{separator}, {letters}, {_count(fmt.digit_width, 'digit')}"


def _template_of(prefix: str) -> str | None:
    return normalize_template(prefix) if is_template(prefix) else None


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

    def __init__(
        self, repository: IdManagerRepository, options: ServiceOptions = DEFAULT_OPTIONS
    ) -> None:
        self.repository = repository
        self.sync = SyncIdManagerService(repository, options)

    generate_id = _bridged(SyncIdManagerService.generate_id)
    generate_range = _bridged(SyncIdManagerService.generate_range)
    bulk_generate_ids = _bridged(SyncIdManagerService.bulk_generate_ids)
    get_current_id = _bridged(SyncIdManagerService.get_current_id)
    reset_sequence = _bridged(SyncIdManagerService.reset_sequence)
    get_all_prefixes = _bridged(SyncIdManagerService.get_all_prefixes)
    activate_prefix = _bridged(SyncIdManagerService.activate_prefix)
    deactivate_prefix = _bridged(SyncIdManagerService.deactivate_prefix)
    configure_prefix = _bridged(SyncIdManagerService.configure_prefix)
    import_sequence = _bridged(SyncIdManagerService.import_sequence)
    get_prefix_stats = _bridged(SyncIdManagerService.get_prefix_stats)
    get_service_stats = _bridged(SyncIdManagerService.get_service_stats)
    list_audit = _bridged(SyncIdManagerService.list_audit)
    read_id = _bridged(SyncIdManagerService.read_id)
    health_check = _bridged(SyncIdManagerService.health_check)


def _utc(moment: datetime | None, name: str) -> datetime | None:
    """Return ``moment`` in UTC (naive: UTC already).

    Raises:
        InvalidInputError: its UTC falls outside the calendar (0001-01-01T00:00+01:00).
    """
    if moment is None or moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(f"{name} {moment.isoformat()} has no UTC time") from None
