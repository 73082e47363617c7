"""What is up: models with live workers, and whether this API can take work now."""

from __future__ import annotations

import redis

from api.errors import Unavailable
from shared.heartbeat import live_workers
from shared.model_registry import ModelRegistry
from shared.schemas import ModelInfo


class ModelStatus(ModelInfo):
    """A model, plus whether any generation worker is serving it right now."""

    available: bool
    workers: int


def model_statuses(registry: ModelRegistry, client: redis.Redis) -> list[ModelStatus]:
    statuses = []
    for spec in registry:
        workers = len(live_workers(client, spec.name))
        statuses.append(
            ModelStatus(**spec.info().model_dump(), available=workers > 0, workers=workers)
        )
    return statuses


def readiness(registry: ModelRegistry, client: redis.Redis) -> dict[str, object]:
    """Ready when Redis answers and a worker serves the default model; else ``Unavailable``."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable("redis_unavailable", f"Redis is unreachable: {exc}", 5) from None
    workers = {spec.name: len(live_workers(client, spec.name)) for spec in registry}
    if not workers[registry.default_model]:
        raise Unavailable(
            "no_workers",
            f"no generation worker is serving the default model '{registry.default_model}'",
            5,
        )
    return {"status": "ready", "default_model": registry.default_model, "workers": workers}
