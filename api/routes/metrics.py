"""``GET /metrics``: the whole service's metrics in Prometheus text format (OpenMetrics when
the scraper asks for it). Outside the OpenAPI schema: it is for Prometheus, not clients."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder

from api.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep, request: Request) -> Response:
    """Jobs, queues, workers and webhooks of the whole service (every replica answers the
    same); unauthenticated, like the probes."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(state.metrics), headers={"Content-Type": content_type})
