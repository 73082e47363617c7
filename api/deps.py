"""FastAPI dependencies as ``Annotated`` aliases; tests swap them via ``app.dependency_overrides``.

Everything heavy (Redis pools, the job store, the Celery app) is built once per
``Settings`` object, so overriding ``get_settings`` in a test gets a matching set.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Depends

from api.services.events import JobEvents
from api.services.jobs import JobService
from shared.celery_app import celery_app, make_celery
from shared.jobstore import JobStore
from shared.model_registry import ModelRegistry
from shared.settings import Settings, get_settings
from shared.storage import Storage
from shared.storage import get_storage as storage_for_settings

T = TypeVar("T")

PUBLIC_OWNER = "public"

_cache: dict[tuple[str, int], tuple[Settings, Any]] = {}
_cache_lock = threading.Lock()


def _per_settings(kind: str, settings: Settings, build: Callable[[Settings], T]) -> T:
    """One ``build(settings)`` per settings object and kind (the settings are kept alive)."""
    key = (kind, id(settings))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = (settings, build(settings))
        return cached[1]


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_store(settings: SettingsDep) -> JobStore:
    return _per_settings("store", settings, JobStore.from_settings)


def get_storage(settings: SettingsDep) -> Storage:
    return _per_settings("storage", settings, storage_for_settings)


def get_registry(settings: SettingsDep) -> ModelRegistry:
    return _per_settings("registry", settings, ModelRegistry.from_settings)


def get_redis(settings: SettingsDep) -> redis.Redis:
    """A synchronous client for quick reads (heartbeats, pings)."""
    return _per_settings(
        "redis", settings, lambda s: redis.Redis.from_url(s.redis_url, decode_responses=True)
    )


def _celery_for(settings: Settings) -> Celery:
    # The process-wide app already points at the configured broker; build another
    # only when the settings differ (tests pointing at their own redis-server).
    if celery_app.conf.broker_url == settings.redis_url:
        return celery_app
    return make_celery(settings)


def get_celery(settings: SettingsDep) -> Celery:
    return _per_settings("celery", settings, _celery_for)


async def get_event_redis(settings: SettingsDep) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client for pub/sub waits, closed when the response (or stream) ends.

    Made per request because asyncio connections belong to one event loop.
    """
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def get_owner() -> str:
    """Who is calling. No auth yet: everyone is "public"; an API-key check slots in here."""
    return PUBLIC_OWNER


StoreDep = Annotated[JobStore, Depends(get_store)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
EventRedisDep = Annotated[aioredis.Redis, Depends(get_event_redis)]
OwnerDep = Annotated[str, Depends(get_owner)]


def get_job_service(
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    registry: RegistryDep,
    celery: CeleryDep,
) -> JobService:
    return JobService(settings=settings, store=store, storage=storage, registry=registry,
                      celery=celery)


JobServiceDep = Annotated[JobService, Depends(get_job_service)]


def get_job_events(redis_client: EventRedisDep, store: StoreDep) -> JobEvents:
    return JobEvents(redis=redis_client, store=store)


JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]
