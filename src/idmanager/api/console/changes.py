"""Changing a sequence's state: reset (a dry run first), activate and deactivate.

Every change runs the service operation the JSON API runs, with the caller as the actor in
the audit trail: the same guards (a backwards reset is refused unless forced), the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ...application.results import ResetResult, SequenceStats
from ...application.use_cases import IdManagerUseCases
from ...domain.errors import IdManagerError
from ...domain.format import format_id, parse_id
from ...problems import kind_of
from .access import PostedByAdmin, Viewer, Visit, require_admin
from .forms import text
from .render import base_path, page, partial, wants_partial
from .route import ConsoleRoute
from .sequences import stats_of

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """A reset as a dry run saw it: before, after, and what moving backwards would repeat."""

    before: SequenceStats
    after: ResetResult
    target: int  # the counter after the reset (IDs issued)

    @property
    def backwards(self) -> bool:
        """Return True when the reset would issue IDs a second time."""
        return self.target < self.before.count_issued

    @property
    def repeated(self) -> int:
        """Return how many IDs a backwards reset would issue again."""
        return max(self.before.count_issued - self.target, 0)

    @property
    def skipped(self) -> int:
        """Return how many IDs a forward reset leaves unissued for ever."""
        return max(self.target - self.before.count_issued, 0)

    @property
    def first_repeated(self) -> str:
        """Return the first ID a backwards reset would issue again."""
        return format_id(self.before.prefix, self.target + 1, self.before.format)


def _use_cases(request: Request, found: Visit) -> IdManagerUseCases:
    use_cases: IdManagerUseCases = request.app.state.use_cases
    return use_cases.with_options(actor=found.caller.actor)


def _done(request: Request, stats: SequenceStats, done: str) -> Response:
    query = urlencode({k: v for k, v in (("scope", stats.scope), ("done", done)) if v})
    return RedirectResponse(f"{base_path(request)}/sequences/{stats.prefix}?{query}", 303)


async def plan_reset(
    request: Request, found: Visit, stats: SequenceStats, reset_to: str | None
) -> ResetPlan:
    """Return what resetting to ``reset_to`` would do: a dry run, nothing changed."""
    after = await _use_cases(request, found).run(
        # Forced, so that a backwards target is shown rather than refused; the page then
        # asks for the force and the typed prefix before anything is applied.
        lambda s: s.reset_sequence(stats.prefix, reset_to, True, scope=stats.scope, dry_run=True),
        commit=False,
    )
    target = 0
    if after.latest_id is not None:
        target = parse_id(after.latest_id, fmt=stats.format, prefix=stats.prefix).ordinal
    return ResetPlan(stats, after, target)


@router.get("/sequences/{prefix}/reset")
async def reset_form(request: Request, found: Viewer, prefix: str, scope: str = "") -> Response:
    """Show the reset form of a sequence (admin)."""
    require_admin(found)
    stats = await stats_of(request, found, prefix, scope)
    return await page(request, "reset.html", found, stats=stats, reset_to="", plan=None, error=None)


@router.post("/sequences/{prefix}/reset")
async def reset(request: Request, posted: PostedByAdmin, prefix: str) -> Response:
    """Dry-run a reset (``step=preview``) or apply it (``step=apply``) (admin).

    Backwards needs both the force box ticked and the prefix typed: it issues IDs again.
    """
    found, form = posted
    stats = await stats_of(request, found, prefix, text(form, "scope"))
    reset_to = text(form, "reset_to").strip()
    plan: ResetPlan | None = None
    error: str | None = None
    status = 200
    try:
        plan = await plan_reset(request, found, stats, reset_to or None)
        backwards = plan.backwards
        if text(form, "step") == "apply":
            forced = text(form, "force") == "yes"
            typed = text(form, "confirm").strip().upper() == stats.prefix
            if plan.backwards and not (forced and typed):
                error = (
                    f"Not reset: going back would issue {plan.repeated:,} IDs a second time. "
                    f"To do it anyway, tick the box and type {stats.prefix}."
                )
                status = 409
            else:
                await _use_cases(request, found).run(
                    lambda s: s.reset_sequence(
                        stats.prefix, reset_to or None, backwards, scope=stats.scope
                    )
                )
                return _done(request, stats, "reset")
    except IdManagerError as exc:
        error, status = str(exc), kind_of(exc).status
    context: dict[str, Any] = {"stats": stats, "reset_to": reset_to, "plan": plan, "error": error}
    if wants_partial(request):
        # 200 even for a refusal: htmx swaps in only successful answers, and the fragment
        # carries the reason.
        return partial(request, "_reset_plan.html", found, **context)
    return await page(request, "reset.html", found, status=status, **context)


async def _activation_form(
    request: Request, found: Visit, prefix: str, scope: str, active: bool
) -> Response:
    require_admin(found)
    stats = await stats_of(request, found, prefix, scope)
    return await page(request, "activation.html", found, stats=stats, active=active)


async def _set_active(
    request: Request, posted: PostedByAdmin, prefix: str, active: bool
) -> Response:
    found, form = posted
    stats = await stats_of(request, found, prefix, text(form, "scope"))
    await _use_cases(request, found).run(
        lambda s: (
            s.activate_prefix(stats.prefix, scope=stats.scope)
            if active
            else s.deactivate_prefix(stats.prefix, scope=stats.scope)
        )
    )
    return _done(request, stats, "activated" if active else "deactivated")


@router.get("/sequences/{prefix}/activate")
async def activate_form(request: Request, found: Viewer, prefix: str, scope: str = "") -> Response:
    """Ask to confirm activating a sequence (admin)."""
    return await _activation_form(request, found, prefix, scope, True)


@router.get("/sequences/{prefix}/deactivate")
async def deactivate_form(
    request: Request, found: Viewer, prefix: str, scope: str = ""
) -> Response:
    """Ask to confirm deactivating a sequence (admin)."""
    return await _activation_form(request, found, prefix, scope, False)


@router.post("/sequences/{prefix}/activate")
async def activate(request: Request, posted: PostedByAdmin, prefix: str) -> Response:
    """Let a sequence issue IDs again (admin)."""
    return await _set_active(request, posted, prefix, True)


@router.post("/sequences/{prefix}/deactivate")
async def deactivate(request: Request, posted: PostedByAdmin, prefix: str) -> Response:
    """Make a sequence refuse new IDs; issued IDs stay valid (admin)."""
    return await _set_active(request, posted, prefix, False)
