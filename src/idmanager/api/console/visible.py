"""What a caller may see: every list the console shows, cut to the scopes of its key.

A key bound to one exact scope asks the database for that scope only. A key bound to patterns
(``shop-*``) reads pages and keeps the rows it may see: slower on large tables, but the
service's queries take one scope, and a key must never see another tenant's counters.
"""

from __future__ import annotations

from datetime import datetime

from ...application.results import AuditPage, AuditRecord
from ...application.use_cases import IdManagerUseCases
from ...domain.entity import IdManager
from ..security import Principal

BATCH = 500


def scope_for(principal: Principal, scope: str | None) -> str | None:
    """Return the scope to query: the one asked for (if allowed), or the key's only one.

    Raises:
        ForbiddenError: the key may not use the scope asked for.
    """
    if scope is not None:
        return principal.check_scope(scope)
    return principal.only_scope


async def sequences(
    use_cases: IdManagerUseCases,
    principal: Principal,
    *,
    scope: str | None,
    active: bool | None,
    search: str | None,
    template: str | None,
    skip: int,
    limit: int,
) -> list[IdManager]:
    """Return up to ``limit`` sequences the caller may see, after skipping ``skip`` of them."""
    scope = scope_for(principal, scope)

    async def read(at: int, size: int) -> list[IdManager]:
        return await use_cases.run(
            lambda s: s.get_all_prefixes(
                scope=scope, skip=at, limit=size, active=active, search=search, template=template
            ),
            commit=False,
        )

    if scope is not None or principal.scopes is None:
        return await read(skip, limit)
    kept: list[IdManager] = []
    at = 0
    while len(kept) < skip + limit:
        rows = await read(at, BATCH)
        kept += [row for row in rows if principal.allows(row.scope)]
        if len(rows) < BATCH:
            break
        at += BATCH
    return kept[skip : skip + limit]


async def audit(
    use_cases: IdManagerUseCases,
    principal: Principal,
    *,
    scope: str | None,
    prefix: str | None,
    actor: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    before: int | None,
    limit: int,
) -> AuditPage:
    """Return a page of the audit trail, newest first, of the scopes the caller may see."""
    scope = scope_for(principal, scope)

    async def read(cursor: int | None, size: int) -> AuditPage:
        return await use_cases.run(
            lambda s: s.list_audit(
                scope=scope,
                prefix=prefix,
                actor=actor,
                action=action,
                since=since,
                until=until,
                before=cursor,
                limit=size,
            ),
            commit=False,
        )

    if scope is not None or principal.scopes is None:
        return await read(before, limit)
    kept: list[AuditRecord] = []
    cursor = before
    while True:
        found = await read(cursor, BATCH)
        for item in found.items:
            if principal.allows(item.scope):
                kept.append(item)
                if len(kept) > limit:
                    return AuditPage(kept[:limit], kept[limit - 1].id)
        if found.next_cursor is None:
            return AuditPage(kept, None)
        cursor = found.next_cursor
