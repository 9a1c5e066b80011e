"""Routes for operators and orchestrators: health, liveness and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..application.results import HealthReport, to_json
from ..application.use_cases import IdManagerUseCases
from ..domain.errors import AccessDeniedError, ForbiddenError
from ..settings import Role, Settings
from .deps import Credentials, MetricsDep, bearer_token
from .routes import problems
from .schemas import Liveness
from .security import KeyRing, Principal

logger = logging.getLogger("idmanager.api")
router = APIRouter(tags=["operations"])
UNHEALTHY = "ID Manager service error: database unavailable"


class HealthProbe:
    """The health check, shared: at most one probe of the database per ``ttl`` seconds.

    A flood of health requests then costs one pooled connection, not one each.
    """

    def __init__(self, use_cases: IdManagerUseCases, ttl: float) -> None:
        self.use_cases, self.ttl = use_cases, ttl
        self._last: tuple[float, HealthReport] | None = None
        self._lock = asyncio.Lock()

    async def report(self) -> HealthReport:
        """Return a report at most ``ttl`` seconds old, probing the database if needed."""
        if self._fresh() is None:
            async with self._lock:  # the first caller probes; the others wait and share it
                if self._fresh() is None:
                    report = await self.use_cases.run(lambda s: s.health_check(), commit=False)
                    if not report.healthy:
                        logger.warning("health check failed: %s", report.message)
                    self._last = (time.monotonic(), report)
        # The report just probed or shared, however short ``ttl`` is (0: every call probes).
        assert self._last is not None
        return self._last[1]

    def _fresh(self) -> HealthReport | None:
        if self._last is None or time.monotonic() - self._last[0] > self.ttl:
            return None
        return self._last[1]


def _sees_every_tenant(principal: Principal) -> bool:
    """Return True for a key bound to no scopes (or to ``*``): metrics and health details
    count every tenant."""
    # On the patterns, not on a scope: a glob such as '?' matches the text '*'.
    return principal.scopes is None or "*" in principal.scopes


def _anonymous(report: HealthReport) -> HealthReport:
    """Return what a caller without a key may know: up or down, nothing of the database."""
    if report.healthy:
        return dataclasses.replace(report, prefix_count=None)
    return dataclasses.replace(report, message=UNHEALTHY, error_type=None)


@router.get(
    "/health",
    summary="Health check",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "The database is unavailable."}},
)
async def health(request: Request) -> JSONResponse:
    """Run the health check (a real allocation, rolled back); 503 when unhealthy.

    Open to anyone. Without a key (or with a key bound to scopes), the answer says only
    whether the service works; with a read key it names the failure and counts the prefixes.
    """
    probe: HealthProbe = request.app.state.health
    report = await probe.report()
    keys: KeyRing = request.app.state.keys
    try:
        # Read here, not through the bearer dependency: the route needs no key, and its
        # OpenAPI operation must not say it does.
        principal = keys.authorize(bearer_token(request.headers.get("Authorization")), Role.READ)
    except AccessDeniedError:
        report = _anonymous(report)
    else:
        if not _sees_every_tenant(principal):  # the count and the cause are the operator's
            report = _anonymous(report)
    return JSONResponse(to_json(report), status_code=200 if report.healthy else 503)


@router.get("/health/live", summary="Liveness", response_model=Liveness)
async def live() -> Liveness:
    """Report that the process answers, without touching the database."""
    return Liveness(status="alive")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **problems(),
    },
)
async def metrics(request: Request, metrics: MetricsDep, credentials: Credentials) -> Response:
    """Expose Prometheus metrics (a read key is needed unless IDMANAGER_METRICS_PUBLIC)."""
    settings: Settings = request.app.state.settings
    if not settings.metrics_public:
        keys: KeyRing = request.app.state.keys
        principal = keys.authorize(credentials.credentials if credentials else None, Role.READ)
        if not _sees_every_tenant(principal):
            raise ForbiddenError("Metrics count every tenant; this key is bound to some scopes")
    # Off the event loop: allocations go on while the page is written.
    body = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
