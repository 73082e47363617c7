"""Claims, the running index and taking back stalled jobs, against a real redis-server:
each move returns and publishes the job it wrote, one caller wins a race, terminal jobs
never change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.jobstore.keys import RUNNING_KEY
from shared.records import JobRecord, OutputImage
from shared.schemas import ErrorCode, EventType, JobStatus, Metrics, Priority, Progress
from shared.settings import Settings
from tests.factories import make_plan, make_record

IMAGE = OutputImage(index=0, seed=1, width=64, height=64, format="png")
# store_settings (tests/shared/conftest.py): two attempts; the defaults otherwise.
SETTINGS = Settings()
HARD = SETTINGS.task_time_limit
GRACE = SETTINGS.reaper_grace_seconds
TTL = SETTINGS.heartbeat_ttl_seconds


def created(store: JobStore, **overrides) -> JobRecord:
    record, is_new = store.create(make_record(**overrides))
    assert is_new
    return record


def running(store: JobStore, worker: str = "w1", **overrides) -> JobRecord:
    job = store.mark_running(created(store, **overrides).id, worker)
    assert job is not None and job.status is JobStatus.RUNNING
    return job


def claimed_at(client: redis.Redis, job_id: str) -> float:
    score = client.zscore(RUNNING_KEY, job_id)
    assert score is not None, f"{job_id} is not in the running index"
    return score


def alive(client: redis.Redis, job: JobRecord, worker: str = "w1", job_id: str | None = None,
          ) -> None:
    """``worker``'s heartbeat for the job's model, naming ``job_id`` (default the job)."""
    beat(client, job.request.model, worker, ttl_seconds=60,
         job_id=job.id if job_id is None else job_id)


# -- claims and the running index -----------------------------------------------------


def test_a_claim_records_the_worker_and_files_the_job_as_running(
    store: JobStore, redis_client: redis.Redis
) -> None:
    before = time.time()
    job = running(store, "host-42")
    assert redis_client.hget(f"latentd:job:{job.id}", "worker") == "host-42"
    assert before - 1 < claimed_at(redis_client, job.id) < time.time() + 1
    # Progress keeps the claim time; a second claim (redelivery) moves it and the worker.
    first = claimed_at(redis_client, job.id)
    store.update_progress(job.id, 1, 4, None, worker="host-42")
    assert claimed_at(redis_client, job.id) == first
    again = store.mark_running(job.id, "host-43")
    assert again.attempts == 2
    assert claimed_at(redis_client, job.id) > first
    assert redis_client.hget(f"latentd:job:{job.id}", "worker") == "host-43"


@pytest.mark.parametrize("finish", [
    lambda s, j: s.mark_succeeded(j, [IMAGE], Metrics(), "w1"),
    lambda s, j: s.mark_failed(j, ErrorCode.GENERATION_FAILED, "broke", "w1"),
    lambda s, j: s.mark_canceled(j, "w1"),
    lambda s, j: s.delete(j),
    lambda s, j: (s.mark_running(j, "w2"), s.mark_running(j, "w3")),  # out of attempts
], ids=["succeeded", "failed", "canceled", "deleted", "worker_lost"])
def test_a_job_that_stops_running_leaves_the_index(
    store: JobStore, redis_client: redis.Redis, finish: Callable
) -> None:
    job = running(store)
    finish(store, job.id)
    assert redis_client.zscore(RUNNING_KEY, job.id) is None


def test_moves_for_a_worker_apply_only_while_its_claim_stands(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    job = running(store, "old")
    taken = store.mark_running(job.id, "new")  # the task was redelivered to another worker
    events = listen(job.id)
    hook_calls.clear()
    assert store.update_progress(job.id, 3, 4, None, worker="old") is None
    assert store.mark_succeeded(job.id, [IMAGE], Metrics(), "old") is None
    assert store.mark_failed(job.id, ErrorCode.TIMEOUT, "late", "old") is None
    assert store.mark_canceled(job.id, "old") is None
    assert events.drain() == [] and hook_calls == []
    assert store.get(job.id) == taken
    done = store.mark_succeeded(job.id, [IMAGE], Metrics(), "new")
    assert done.status is JobStatus.SUCCEEDED
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, done)]


def test_a_queued_job_refuses_moves_made_for_a_worker(store: JobStore) -> None:
    queued = created(store)
    assert store.mark_failed(queued.id, ErrorCode.TIMEOUT, "x", "w1") is None
    assert store.mark_canceled(queued.id, "w1") is None
    assert store.get(queued.id) == queued
    # Without a worker, failing a queued job stays allowed (a worker without its model).
    assert store.mark_failed(queued.id, ErrorCode.MODEL_UNAVAILABLE, "x").status is JobStatus.FAILED


def test_is_cancel_requested_says_stop_for_a_canceled_deleted_or_lost_job(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = running(store, "w1")
    assert not store.is_cancel_requested(job.id)
    assert not store.is_cancel_requested(job.id, "w1")
    assert store.is_cancel_requested(job.id, "w2")  # claimed by another
    store.mark_running(job.id, "w2")
    assert store.is_cancel_requested(job.id, "w1") and not store.is_cancel_requested(job.id)
    store.request_cancel(job.id)
    assert store.is_cancel_requested(job.id) and store.is_cancel_requested(job.id, "w2")

    deleted = running(store, "w1")
    store.delete(deleted.id)
    assert store.is_cancel_requested(deleted.id)
    assert store.is_cancel_requested(deleted.id, "w1")

    requeued = running(store, "w1")
    assert store.reclaim(requeued.id).status is JobStatus.QUEUED  # no heartbeat: dead
    assert store.is_cancel_requested(requeued.id, "w1")
    assert store.is_cancel_requested("job_" + "0" * 24)


# -- taking back stalled jobs ---------------------------------------------------------


def test_a_job_whose_worker_stopped_beating_is_queued_again(
    store: JobStore, redis_client: redis.Redis, listen: Callable, hook_calls: list
) -> None:
    waiting = created(store)  # queued before the job was taken back: stays ahead of it
    job = running(store, "w1")
    store.update_progress(job.id, 3, 4, 1.0, worker="w1")
    events = listen(job.id)
    hook_calls.clear()

    requeued = store.reclaim(job.id)  # w1 has no heartbeat key: it died

    assert requeued.status is JobStatus.QUEUED and requeued.attempts == 1
    assert requeued.progress == Progress() and requeued.error is None
    assert requeued.queue_position == 1 and requeued.updated_at > job.updated_at
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.QUEUED, requeued)]
    assert hook_calls == [(requeued, EventType.QUEUED)]
    assert store.get(job.id) == requeued
    assert redis_client.zscore(RUNNING_KEY, job.id) is None
    assert redis_client.hget(f"latentd:job:{job.id}", "worker") is None
    assert store.get(waiting.id).queue_position == 0
    # The old worker's late writes change nothing; the next claim is the second attempt.
    assert store.mark_succeeded(job.id, [IMAGE], Metrics(), "w1") is None
    rerun = store.mark_running(job.id, "w2")
    assert rerun.attempts == 2 and rerun.queue_position is None
    assert store.get(waiting.id).queue_position == 0


def test_a_requeued_job_keeps_its_priority(store: JobStore) -> None:
    job = running(store, request=make_plan(priority=Priority.HIGH))
    normal = created(store)
    assert store.reclaim(job.id).queue_position == 0
    assert store.get(normal.id).queue_position == 1


def test_a_live_worker_on_its_job_within_the_limit_is_left_alone(
    store: JobStore, redis_client: redis.Redis, listen: Callable, hook_calls: list
) -> None:
    job = running(store, "w1")
    alive(redis_client, job, "w1")
    events = listen(job.id)
    hook_calls.clear()
    start = claimed_at(redis_client, job.id)
    for now in (None, start + TTL + 1, start + HARD + GRACE - 1):
        assert store.reclaim(job.id, now=now) is None
    assert store.reclaim_stalled() == []
    assert events.drain() == [] and hook_calls == []
    assert store.get(job.id) == job
    assert redis_client.zscore(RUNNING_KEY, job.id) == start


def test_a_worker_that_moved_on_loses_the_job_once_its_beat_had_time_to_say_so(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = running(store, "w1")
    alive(redis_client, job, "w1", job_id="")  # idle: its task ended without finishing
    start = claimed_at(redis_client, job.id)
    # A fresh claim: the worker's next beat names the job.
    assert store.reclaim(job.id, now=start + TTL / 2) is None
    alive(redis_client, job, "w1", job_id="job_" + "1" * 24)  # running another job
    assert store.reclaim(job.id, now=start + TTL + 1).status is JobStatus.QUEUED


def test_a_dead_workers_job_with_no_attempt_left_fails_worker_lost(
    store: JobStore, listen: Callable
) -> None:
    job = running(store, "w1")
    store.mark_running(job.id, "w2")  # store_settings: 2 attempts, both used
    events = listen(job.id)
    failed = store.reclaim(job.id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 2
    assert failed.error.code is ErrorCode.WORKER_LOST and "2 times" in failed.error.message
    assert failed.finished_at == failed.updated_at
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, failed)]


def test_a_job_past_the_hard_limit_fails_timeout_even_with_a_live_worker(
    store: JobStore, redis_client: redis.Redis, listen: Callable
) -> None:
    job = running(store, "w1")
    alive(redis_client, job, "w1")  # beating, but Celery could not stop the run
    events = listen(job.id)
    failed = store.reclaim(job.id, now=claimed_at(redis_client, job.id) + HARD + GRACE + 1)
    assert failed.status is JobStatus.FAILED
    assert failed.error.code is ErrorCode.TIMEOUT and f"{HARD} s" in failed.error.message
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, failed)]
    assert redis_client.zscore(RUNNING_KEY, job.id) is None


def test_a_job_whose_worker_died_past_the_hard_limit_fails_timeout(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = running(store, "w1")  # no heartbeat: Celery killed it at the hard limit
    failed = store.reclaim(job.id, now=claimed_at(redis_client, job.id) + HARD + 1)
    assert failed.status is JobStatus.FAILED and failed.error.code is ErrorCode.TIMEOUT


def test_a_claim_without_a_worker_name_is_judged_by_time_only(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = running(store, "")
    start = claimed_at(redis_client, job.id)
    assert store.reclaim(job.id, now=start + HARD) is None
    assert store.reclaim(job.id, now=start + HARD + GRACE + 1).error.code is ErrorCode.TIMEOUT


def test_a_dead_workers_job_its_owner_canceled_ends_canceled(store: JobStore) -> None:
    job = running(store, "w1")
    store.request_cancel(job.id)  # the flag no worker will read any more
    canceled = store.reclaim(job.id)
    assert canceled.status is JobStatus.CANCELED and canceled.error.code is ErrorCode.CANCELED


def test_finished_or_missing_jobs_are_never_taken_back(
    store: JobStore, redis_client: redis.Redis, listen: Callable
) -> None:
    job = running(store, "w1")
    done = store.mark_succeeded(job.id, [IMAGE], Metrics(), "w1")
    redis_client.zadd(RUNNING_KEY, {job.id: 1.0, "job_" + "0" * 24: 1.0})  # stale entries
    events = listen(job.id)
    assert store.reclaim(job.id, now=time.time() + 10**6) is None
    assert store.reclaim_stalled(now=time.time() + 10**6) == []
    assert events.drain() == []
    assert store.get(job.id) == done
    assert redis_client.zcard(RUNNING_KEY) == 0  # dropped as they were passed
    queued = created(store)
    assert store.reclaim(queued.id) is None and store.get(queued.id) == queued


def test_racing_reapers_take_a_job_back_once(store: JobStore, listen: Callable) -> None:
    for _ in range(20):
        job = running(store, "w1")
        events = listen(job.id)
        results: list[JobRecord | None] = []
        barrier = threading.Barrier(3)

        def reap(job_id: str = job.id, barrier=barrier, results=results) -> None:
            barrier.wait()
            results.append(store.reclaim(job_id))

        threads = [threading.Thread(target=reap) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and winners[0].status is JobStatus.QUEUED
        assert [e.type for e in events.drain()] == [EventType.QUEUED]


def test_reclaim_stalled_takes_back_only_the_stalled_ones(
    store: JobStore, redis_client: redis.Redis
) -> None:
    healthy = running(store, "w1")
    alive(redis_client, healthy, "w1")
    dead = [running(store, f"dead-{i}") for i in range(3)]
    reaped = store.reclaim_stalled()
    assert sorted(j.id for j in reaped) == sorted(j.id for j in dead)
    assert all(j.status is JobStatus.QUEUED for j in reaped)
    assert redis_client.zrange(RUNNING_KEY, 0, -1) == [healthy.id]
    assert store.reclaim_stalled() == []


def test_a_live_run_is_not_taken_over_by_a_second_claim(
    store: JobStore, redis_client: redis.Redis
) -> None:

    job, _ = store.create(make_record())
    beat(redis_client, job.request.model, "worker-a", ttl_seconds=60, job_id=job.id)
    assert store.mark_running(job.id, "worker-a") is not None
    # A redelivered or re-published task reaches another worker while worker-a still runs
    # the job: the claim is refused, no attempt is used, the run goes on.
    assert store.mark_running(job.id, "worker-b") is None
    current = store.get(job.id)
    assert current.status is JobStatus.RUNNING and current.attempts == 1
    assert not store.is_cancel_requested(job.id, "worker-a")
    # Once worker-a no longer beats for it (died, or moved on), the claim may be taken.
    beat(redis_client, job.request.model, "worker-a", ttl_seconds=60, job_id="")
    claimed = store.mark_running(job.id, "worker-b")
    assert claimed is not None and claimed.attempts == 2
