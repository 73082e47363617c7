"""Probes: ``/healthz`` (the process is up) and ``/readyz`` (it can take work now)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import RedisDep, RegistryDep
from api.services.status import readiness
from shared.schemas import ErrorBody

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 whenever the process answers; checks nothing else (a liveness probe).

    ``async``: a plain ``def`` would be run on the thread pool, a hop that a probe of the
    event loop itself has no use for (and the benchmarks' HTTP ceiling would include it)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
def readyz(registry: RegistryDep, redis_client: RedisDep) -> dict[str, object]:
    """200 when Redis answers and a worker serves the default model; 503 with the reason."""
    return readiness(registry, redis_client)
