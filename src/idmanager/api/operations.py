"""Routes for operators and orchestrators: health, liveness and metrics (no API key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..application.results import HealthReport, to_json
from .deps import MetricsDep, UseCases
from .schemas import Liveness

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    summary="Health check",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "The database is unavailable."}},
)
async def health(use_cases: UseCases) -> JSONResponse:
    """Run the health check: a real allocation, rolled back; 503 when unhealthy."""
    report = await use_cases.run(lambda s: s.health_check(), commit=False)
    return JSONResponse(to_json(report), status_code=200 if report.healthy else 503)


@router.get("/health/live", summary="Liveness", response_model=Liveness)
async def live() -> Liveness:
    """Report that the process answers, without touching the database."""
    return Liveness(status="alive")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Expose Prometheus metrics."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
