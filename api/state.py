"""The API process's composition root: every long-lived object, built once at startup.

``build_app_state`` runs in the app's lifespan, before uvicorn reports the app ready, so a
bad ``LATENTD_*`` value stops the process there with a message naming the setting.
Nothing here runs at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis
from celery import Celery
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from api.services.auth import Authenticator
from api.services.event_hub import EventHub
from api.services.job_reads import PublicJobReads
from api.services.metrics import build_metrics_registry
from api.services.quotas import QueueCaps, RequestRate
from api.services.status import ModelAvailability
from shared.adapters import Adapters
from shared.celery_app import make_celery
from shared.jobstore import AsyncJobReader, JobStore
from shared.model_registry import ModelRegistry
from shared.settings import Settings
from shared.storage import Storage, get_storage
from shared.webhooks import WebhookPublisher

# The asyncio client only reads (jobs, keys, events), so a command that failed on its
# connection is tried again on a new one: after Redis restarts, each connection the pool
# kept fails its next command, and without this the first reads of a restarted Redis
# were answered 503 (redis-py's default is no retry). During an outage a read gives up
# after these tries, a few tenths of a second later than it would without them.
READ_RETRIES = 2
READ_RETRY_BASE_SECONDS = 0.02
READ_RETRY_CAP_SECONDS = 0.2


@dataclass
class AppState:
    """What every request of this process shares."""

    settings: Settings
    registry: ModelRegistry
    redis: redis.Redis  # synchronous: the job store and quick reads
    # asyncio, on the serving event loop: the request path's reads (jobs, keys, rates)
    # and the pub/sub connection, with no thread-pool hop.
    event_redis: aioredis.Redis
    events: EventHub  # the one pub/sub connection every SSE stream and wait shares
    celery: Celery
    store: JobStore
    storage: Storage
    availability: ModelAvailability
    auth: Authenticator
    rate: RequestRate
    queue_caps: QueueCaps
    metrics: CollectorRegistry  # what GET /metrics renders: the whole service's, from Redis
    reader: AsyncJobReader  # job reads on the serving loop (event_redis)
    job_reads: PublicJobReads  # GET /v1/jobs/{id}: the public JSON, kept per reply
    # LoRAs and ControlNets requests may add (LATENTD_LORA_DIR, ControlNet folders).
    adapters: Adapters = field(default_factory=Adapters)

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.event_redis.aclose()
        self.redis.close()


def build_app_state(settings: Settings) -> AppState:
    """Build the process's objects; ``ValueError`` naming the setting on bad configuration."""
    registry = ModelRegistry.from_settings(settings)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    celery = make_celery(settings)
    event_redis = aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True,
        retry=Retry(ExponentialWithJitterBackoff(base=READ_RETRY_BASE_SECONDS,
                                                 cap=READ_RETRY_CAP_SECONDS), READ_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])
    reader = AsyncJobReader(event_redis)
    return AppState(
        settings=settings,
        registry=registry,
        redis=client,
        event_redis=event_redis,
        events=EventHub(event_redis, settings.max_streams, settings.max_streams_per_key),
        celery=celery,
        # Every transition this process makes is sent to its webhooks (and counted by the
        # store's own scripts).
        store=JobStore(client, settings, on_event=WebhookPublisher(client, celery)),
        storage=get_storage(settings),
        availability=ModelAvailability(client),
        auth=Authenticator.from_settings(settings, client, event_redis),
        rate=RequestRate(settings),
        queue_caps=QueueCaps(client, settings, registry.names()),
        metrics=build_metrics_registry(client, registry.names()),
        reader=reader,
        job_reads=PublicJobReads(reader),
        adapters=Adapters.from_sources(settings.lora_dir, settings.models),
    )
