"""What is up: models with live workers, and whether this API can take work now."""

from __future__ import annotations

import threading
import time

import redis
from pydantic import Field

from api.errors import Unavailable
from shared.adapters import Adapters
from shared.heartbeat import live_workers, live_workers_of
from shared.metrics import read_worker_stats
from shared.model_registry import ModelRegistry
from shared.schemas import ModelInfo


class ModelStatus(ModelInfo):
    """A model, plus whether any generation worker is serving it right now."""

    available: bool
    workers: int
    # Of those, the workers holding its weights in memory now; the others load it when a
    # job needs it (LATENTD_WORKER_MEMORY_BUDGET), which makes that job slower.
    loaded_workers: int
    # What a request to this model may add: LoRA names (``loras``) and ControlNet models
    # (``control``) that fit its UNet.
    loras: list[str] = Field(default_factory=list)
    control_models: list[str] = Field(default_factory=list)


def model_statuses(
    registry: ModelRegistry, client: redis.Redis, adapters: Adapters | None = None
) -> list[ModelStatus]:
    adapters = adapters or Adapters()
    hot = [stats.hot_models for stats in read_worker_stats(client).values()]
    live = live_workers_of(client, [spec.name for spec in registry])
    statuses = []
    for spec in registry:
        workers = len(live[spec.name])
        loaded = sum(spec.name in models for models in hot)
        statuses.append(ModelStatus(
            **spec.info().model_dump(), available=workers > 0, workers=workers,
            loaded_workers=min(loaded, workers), loras=adapters.loras_for(spec),
            control_models=adapters.controlnets_for(spec),
        ))
    return statuses


def readiness(registry: ModelRegistry, client: redis.Redis) -> dict[str, object]:
    """Ready when Redis answers and a worker serves the default model; else ``Unavailable``."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable("redis_unavailable", f"Redis is unreachable: {exc}", 5) from None
    workers = {model: len(names) for model, names in
               live_workers_of(client, [spec.name for spec in registry]).items()}
    if not workers[registry.default_model]:
        raise Unavailable(
            "no_workers",
            f"no generation worker is serving the default model '{registry.default_model}'",
            5,
        )
    return {"status": "ready", "default_model": registry.default_model, "workers": workers}


class ModelAvailability:
    """Whether a live generation worker serves a model, as submit asks it for every job.

    Answers are kept ``cache_seconds``: a heartbeat lives 15 s, so a second-old answer is
    as good as a fresh one, and a burst of submits costs one Redis scan per model.
    """

    def __init__(self, client: redis.Redis, cache_seconds: float = 1.0):
        self._client = client
        self._cache_seconds = cache_seconds
        self._seen: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def is_served(self, model: str) -> bool:
        now = time.monotonic()
        with self._lock:
            cached = self._seen.get(model)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        served = bool(live_workers(self._client, model))
        with self._lock:
            self._seen[model] = (now, served)
        return served

    def is_co_served(self, model: str, companion: str) -> bool:
        """Whether every live worker serving ``model`` also serves ``companion`` (a job
        queued for ``model`` may be taken by any of them). Asked only for the few jobs that
        need two models, so it is not cached."""
        workers = set(live_workers(self._client, model))
        return bool(workers) and workers <= set(live_workers(self._client, companion))
