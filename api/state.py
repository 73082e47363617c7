"""The API process's composition root: every long-lived object, built once at startup.

``build_app_state`` runs in the app's lifespan, before uvicorn reports the app ready, so a
bad ``LATENTD_*`` value stops the process there with a message naming the setting.
Nothing here runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from celery import Celery

from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.model_registry import ModelRegistry
from shared.settings import Settings
from shared.storage import Storage, get_storage
from shared.webhooks import WebhookPublisher


@dataclass
class AppState:
    """What every request of this process shares."""

    settings: Settings
    registry: ModelRegistry
    redis: redis.Redis  # synchronous: the job store and quick reads
    event_redis: aioredis.Redis  # asyncio: pub/sub waits, on the serving event loop
    celery: Celery
    store: JobStore
    storage: Storage

    async def aclose(self) -> None:
        await self.event_redis.aclose()
        self.redis.close()


def build_app_state(settings: Settings) -> AppState:
    """Build the process's objects; ``ValueError`` naming the setting on bad configuration."""
    registry = ModelRegistry.from_settings(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    celery = make_celery(settings)
    return AppState(
        settings=settings,
        registry=registry,
        redis=client,
        event_redis=aioredis.Redis.from_url(settings.redis_url, decode_responses=True),
        celery=celery,
        store=JobStore(client, settings, on_event=WebhookPublisher(client, celery)),
        storage=get_storage(settings),
    )
