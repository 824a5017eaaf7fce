"""`GET /metrics`: Prometheus text exposition, unauthenticated, for the operator's scraper.

Nothing in it names a person: counters carry listener, stage and status tokens only (see
mssgate.metrics) and the gauges are aggregate counts and ages computed from the database.
Keep the port off the Internet or put the scrape behind the operator's reverse proxy.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry

from mssgate import metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def scrape(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(
        content=metrics.render(registry),
        headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"},
    )
