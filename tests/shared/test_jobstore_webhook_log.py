"""Webhook delivery attempts: on the job from the next record it returns, gone with it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import redis

from shared.jobstore import JobStore
from shared.schemas import EventType, Metrics, WebhookAttempt
from tests.factories import make_record


def attempt(n: int, delivered: bool) -> WebhookAttempt:
    return WebhookAttempt(event_id=f"evt_{n}", event_type=EventType.STARTED, attempt=n,
                          at=datetime.now(UTC), status_code=200 if delivered else 500,
                          duration_seconds=0.1, delivered=delivered)


def test_attempts_appear_in_the_next_record_and_event(
    store: JobStore, listen: Callable
) -> None:
    job_id = store.create(make_record())[0].id
    assert store.mark_running(job_id).webhook_attempts == []
    assert store.record_webhook_attempt(job_id, attempt(1, delivered=False))
    assert store.record_webhook_attempt(job_id, attempt(2, delivered=True))
    events = listen(job_id)
    done = store.mark_succeeded(job_id, [], Metrics())
    assert [(a.attempt, a.delivered) for a in done.webhook_attempts] == [(1, False), (2, True)]
    assert events.drain()[0].job.webhook_attempts == done.webhook_attempts
    assert store.get(job_id).webhook_attempts == done.webhook_attempts


def test_the_log_expires_with_its_job_and_needs_one(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job_id = store.create(make_record())[0].id
    store.record_webhook_attempt(job_id, attempt(1, delivered=True))
    job_expiry = redis_client.pexpiretime(f"latentd:job:{job_id}")
    assert job_expiry > 0
    assert redis_client.pexpiretime(f"latentd:job:{job_id}:webhooks") == job_expiry
    missing = "job_" + "0" * 24
    assert not store.record_webhook_attempt(missing, attempt(1, delivered=True))
    assert not redis_client.exists(f"latentd:job:{missing}:webhooks")
