"""JobStore against a real redis-server: transitions, races, events, listing, idempotency."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared.jobstore import IdempotencyConflict, JobStore
from shared.schemas import (
    EventType,
    ImageInfo,
    Job,
    JobParams,
    JobStatus,
    Metrics,
    Priority,
    WebhookAttempt,
)
from shared.settings import Settings


def make_job(store: JobStore, owner: str = "alice", priority: Priority = Priority.NORMAL,
             created_at: datetime | None = None) -> Job:
    now = created_at or datetime.now(UTC)
    params = JobParams(
        task="text-to-image", model="tiny-random", prompt="a cat", negative_prompt=None,
        width=64, height=64, num_images=1, steps=4, guidance_scale=5.0, scheduler="ddim",
        seed=1, seeds=[1], strength=0.75, outpaint=None, output_format="png",
        priority=priority, webhook=None,
    )
    return Job(id=store.new_job_id(), owner=owner, status=JobStatus.QUEUED, created_at=now,
               updated_at=now, request=params, metadata={"k": "v"})


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def events() -> list[tuple[str, EventType]]:
    return []


@pytest.fixture
def store(client: redis.Redis, events: list) -> JobStore:
    settings = Settings(redis_url="redis://unused", job_ttl_seconds=3600, task_max_attempts=2)
    return JobStore(client, settings, on_event=lambda job, ev: events.append((job.id, ev)))


def test_create_then_get_round_trips_the_job(store: JobStore, events: list) -> None:
    job, created = store.create(make_job(store))
    assert created
    fetched = store.get(job.id)
    assert fetched is not None
    assert fetched.status is JobStatus.QUEUED
    assert fetched.request.prompt == "a cat"
    assert fetched.metadata == {"k": "v"}
    assert fetched.queue_position == 0
    assert events == [(job.id, EventType.QUEUED)]
    assert store.get("job_missing") is None


def test_full_lifecycle_stamps_times_and_emits_one_event_per_change(
    store: JobStore, events: list
) -> None:
    job, _ = store.create(make_job(store))
    running = store.mark_running(job.id)
    assert running is not None and running.status is JobStatus.RUNNING
    assert running.started_at is not None and running.attempts == 1
    store.update_progress(job.id, 2, 4, 1.5)
    assert store.get(job.id).progress.step == 2
    image = ImageInfo(index=0, url="/x", seed=1, width=64, height=64, content_type="image/png")
    done = store.mark_succeeded(job.id, [image], Metrics(total_seconds=1.0))
    assert done is not None and done.status is JobStatus.SUCCEEDED
    assert done.finished_at >= done.started_at >= done.created_at
    assert done.images == [image]
    assert [e for _, e in events] == [
        EventType.QUEUED, EventType.STARTED, EventType.PROGRESS, EventType.COMPLETED
    ]


def test_terminal_state_never_changes(store: JobStore) -> None:
    job, _ = store.create(make_job(store))
    store.mark_running(job.id)
    assert store.mark_failed(job.id, "boom", "it broke") is not None
    assert store.mark_succeeded(job.id, [], Metrics()) is None
    assert store.mark_canceled(job.id) is None
    assert store.mark_running(job.id) is None
    store.update_progress(job.id, 3, 4, None)
    final = store.get(job.id)
    assert final.status is JobStatus.FAILED
    assert final.error.code == "boom"
    assert final.progress.step == 0


def test_racing_transitions_have_exactly_one_winner(store: JobStore) -> None:
    for _ in range(20):
        job_id = store.create(make_job(store))[0].id
        store.mark_running(job_id)
        results: list[Job | None] = []
        barrier = threading.Barrier(2)

        def finish(action, job_id=job_id, barrier=barrier, results=results) -> None:
            barrier.wait()
            results.append(action(job_id))

        threads = [
            threading.Thread(target=finish,
                             args=(lambda j: store.mark_succeeded(j, [], Metrics()),)),
            threading.Thread(target=finish, args=(store.mark_canceled,)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.get(job_id).status is winners[0].status


def test_transitions_publish_on_the_job_channel(store: JobStore, client: redis.Redis) -> None:
    job = make_job(store)
    pubsub = client.pubsub()
    pubsub.subscribe(store.channel(job.id))
    pubsub.get_message(timeout=1)  # subscribe confirmation
    store.create(job)
    store.mark_running(job.id)
    store.mark_canceled(job.id)
    seen = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        seen.append(json.loads(message["data"]))
    assert [(m["type"], m["status"]) for m in seen] == [
        ("queued", "queued"), ("started", "running"), ("completed", "canceled")
    ]


def test_queue_position_follows_priority_then_age(store: JobStore) -> None:
    base = datetime.now(UTC)
    first = store.create(make_job(store, created_at=base))[0]
    second = store.create(make_job(store, created_at=base + timedelta(milliseconds=5)))[0]
    urgent = store.create(
        make_job(store, priority=Priority.HIGH, created_at=base + timedelta(milliseconds=10))
    )[0]
    assert store.get(urgent.id).queue_position == 0
    assert store.get(first.id).queue_position == 1
    assert store.get(second.id).queue_position == 2
    store.mark_running(urgent.id)
    assert store.get(urgent.id).queue_position is None
    assert store.get(second.id).queue_position == 1


def test_cancel_of_queued_job_is_immediate_and_of_running_job_sets_the_flag(
    store: JobStore,
) -> None:
    queued, _ = store.create(make_job(store))
    assert store.request_cancel(queued.id).status is JobStatus.CANCELED
    assert store.mark_running(queued.id) is None  # a canceled job never runs

    running, _ = store.create(make_job(store))
    store.mark_running(running.id)
    assert not store.is_cancel_requested(running.id)
    assert store.request_cancel(running.id).status is JobStatus.RUNNING
    assert store.is_cancel_requested(running.id)
    assert store.mark_canceled(running.id).status is JobStatus.CANCELED
    assert store.request_cancel("job_missing") is None


def test_redelivered_job_fails_after_max_attempts(store: JobStore) -> None:
    job, _ = store.create(make_job(store))
    assert store.mark_running(job.id).attempts == 1
    assert store.mark_running(job.id).attempts == 2  # worker died, task redelivered
    assert store.mark_running(job.id) is None
    final = store.get(job.id)
    assert final.status is JobStatus.FAILED
    assert final.error.code == "attempts_exhausted"


def test_idempotency_key_returns_same_job_or_conflicts(store: JobStore) -> None:
    first, created = store.create(make_job(store), idempotency_key="k1", fingerprint="aaa")
    again, created_again = store.create(make_job(store), idempotency_key="k1", fingerprint="aaa")
    assert created and not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create(make_job(store), idempotency_key="k1", fingerprint="bbb")
    # Keys are per owner.
    other, created_other = store.create(
        make_job(store, owner="bob"), idempotency_key="k1", fingerprint="bbb"
    )
    assert created_other and other.id != first.id


def test_list_is_per_owner_newest_first_with_cursor(store: JobStore) -> None:
    base = datetime.now(UTC)
    ids = [
        store.create(make_job(store, created_at=base + timedelta(milliseconds=i)))[0].id
        for i in range(5)
    ]
    store.create(make_job(store, owner="bob"))
    page = store.list("alice", limit=2)
    assert [j.id for j in page.jobs] == ids[::-1][:2]
    page2 = store.list("alice", limit=2, cursor=page.next_cursor)
    assert [j.id for j in page2.jobs] == ids[::-1][2:4]
    page3 = store.list("alice", limit=2, cursor=page2.next_cursor)
    assert [j.id for j in page3.jobs] == ids[:1]
    assert page3.next_cursor is None
    store.mark_running(ids[0])
    assert [j.id for j in store.list("alice", status=JobStatus.RUNNING).jobs] == [ids[0]]
    with pytest.raises(ValueError):
        store.list("bob", cursor=ids[0])


def test_records_expire_and_delete_removes_everything(store: JobStore, client: redis.Redis) -> None:
    job, _ = store.create(make_job(store))
    ttl = client.ttl(f"latentd:job:{job.id}")
    assert 3500 < ttl <= 3600
    store.record_webhook_attempt(job.id, WebhookAttempt(
        event_id="evt", event_type="completed", attempt=1, at=datetime.now(UTC),
        status_code=200, duration_seconds=0.1, delivered=True))
    assert store.get(job.id).webhook_attempts[0].status_code == 200
    assert store.pop_expired(now=datetime.now(UTC).timestamp()) == []
    assert store.pop_expired(now=datetime.now(UTC).timestamp() + 3601) == [job.id]
    assert store.delete(job.id)
    assert store.get(job.id) is None
    assert store.list("alice").jobs == []
    assert not store.delete(job.id)
