"""Job store fixtures: a store on the test's real Redis, its hook calls, its job channels."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from shared.jobstore import JobStore
from shared.records import JobRecord
from shared.schemas import EventType
from shared.settings import Settings
from tests.job_events import Listener


@pytest.fixture
def store_settings() -> Settings:
    return Settings(job_ttl_seconds=3600, task_max_attempts=2)


@pytest.fixture
def hook_calls() -> list[tuple[JobRecord, EventType]]:
    """What the store's ``on_event`` hook received, in order."""
    return []


@pytest.fixture
def store(redis_client: redis.Redis, store_settings: Settings, hook_calls: list) -> JobStore:
    return JobStore(redis_client, store_settings,
                    on_event=lambda record, event: hook_calls.append((record, event)))


@pytest.fixture
def listen(redis_client: redis.Redis) -> Iterator[Callable[[str], Listener]]:
    """``listen(job_id)``: subscribe to the job's channel now."""
    listeners: list[Listener] = []

    def subscribe(job_id: str) -> Listener:
        listeners.append(Listener(redis_client, job_id))
        return listeners[-1]

    yield subscribe
    for listener in listeners:
        listener.close()
