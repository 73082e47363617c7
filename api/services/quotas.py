"""Fair use: a request rate per key (the ``limits`` package, counted in Redis so every API
process shares one count, through its asyncio storage on the serving loop), and caps on
queued jobs per key and per model."""

from __future__ import annotations

import math
import time

import redis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from api.errors import ApiError, Unavailable
from shared.jobstore.keys import owner_key, queue_key
from shared.settings import Settings

QUEUE_FULL_RETRY_AFTER_SECONDS = 30


class RateLimited(ApiError):
    def __init__(self, code: str, message: str, retry_after_seconds: int):
        super().__init__(429, code, message,
                         headers={"Retry-After": str(max(1, retry_after_seconds))})


class RequestRate:
    """``LATENTD_RATE_LIMIT`` requests per key, in a sliding window kept in Redis."""

    def __init__(self, settings: Settings):
        self._item: RateLimitItem | None = (
            parse(settings.rate_limit) if settings.rate_limit else None)
        self._limiter = (
            SlidingWindowCounterRateLimiter(
                RedisStorage(f"async+{settings.redis_url}", implementation="redispy"))
            if self._item else None)

    async def hit(self, owner: str) -> None:
        """Count one request of ``owner``; ``RateLimited`` (429) once over the rate."""
        if self._item is None or self._limiter is None:
            return
        if not await self._limiter.hit(self._item, "latentd", owner):
            reset_at, _ = await self._limiter.get_window_stats(self._item, "latentd", owner)
            raise RateLimited(
                "rate_limited", f"more than {self._item} requests from this key; slow down",
                math.ceil(reset_at - time.time()),
            )


class QueueCaps:
    """Refuse a submit while the key, or the model's queue, holds too many queued jobs."""

    def __init__(self, client: redis.Redis, settings: Settings, models: list[str]):
        self._redis = client
        self._per_key = settings.max_queued_jobs_per_key
        self._per_model = settings.max_queued_jobs
        self._models = models

    def check(self, owner: str, model: str) -> int:
        """How many jobs ``owner`` has queued (up to its cap), once both caps allow one more."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(queue_key(model))
        # The key's queued jobs: its jobs that are also in a model's queue.
        for name in self._models:
            pipe.zintercard(2, [owner_key(owner), queue_key(name)], limit=self._per_key)
        in_model, *per_model_of_key = pipe.execute()
        if sum(per_model_of_key) >= self._per_key:
            raise RateLimited(
                "too_many_queued_jobs",
                f"this key has {self._per_key} jobs queued already; wait for some to start",
                QUEUE_FULL_RETRY_AFTER_SECONDS,
            )
        if in_model >= self._per_model:
            raise Unavailable(
                "queue_full", f"model '{model}' has {self._per_model} jobs queued; try later",
                QUEUE_FULL_RETRY_AFTER_SECONDS,
            )
        return int(sum(per_model_of_key))
