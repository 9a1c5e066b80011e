"""What a caller may see: every list the console shows, cut to the scopes of its key.

The database does the cutting: the key's scope patterns (``shop-*``) go into the query, so a
key never sees another tenant's counters and a page is one query whatever the table's size.
"""

from __future__ import annotations

from datetime import datetime

from ...application.results import AuditPage
from ...application.use_cases import IdManagerUseCases
from ...domain.entity import IdManager
from ..security import Principal


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
    return await use_cases.run(
        lambda s: s.get_all_prefixes(
            scope=scope,
            scopes=principal.scopes,
            skip=skip,
            limit=limit,
            active=active,
            search=search,
            template=template,
        ),
        commit=False,
    )


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
    return await use_cases.run(
        lambda s: s.list_audit(
            scope=scope,
            scopes=principal.scopes,
            prefix=prefix,
            actor=actor,
            action=action,
            since=since,
            until=until,
            before=before,
            limit=limit,
        ),
        commit=False,
    )
