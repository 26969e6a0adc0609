"""GET /metrics: Prometheus exposition (aggregated over workers in multiprocess mode)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.prometheus import render_metrics

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    content, content_type = render_metrics()
    return Response(content, media_type=content_type)
