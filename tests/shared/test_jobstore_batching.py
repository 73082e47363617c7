"""Claiming batch companions, against a real redis-server: a worker that claimed a job
takes the queued jobs of its batch signature in queue order, within its priority band,
while their images fit; each is then a claimed job like any other (its own task finds
nothing to run, the reaper takes it back on its own)."""

from __future__ import annotations

import redis

from shared.batching import batch_signature
from shared.heartbeat import beat
from shared.jobstore import JobStore
from shared.jobstore.keys import RUNNING_KEY, batch_key
from shared.records import JobRecord
from shared.schemas import ErrorCode, EventType, JobStatus, Priority
from tests.factories import make_plan, make_record


def created(store: JobStore, **plan: object) -> JobRecord:
    level = plan.pop("queue_level", None)
    record, is_new = store.create(make_record(request=make_plan(**plan), queue_level=level))
    assert is_new
    return record


def leader(store: JobStore, worker: str = "w1", **plan: object) -> JobRecord:
    job = store.mark_running(created(store, **plan).id, worker)
    assert job is not None
    return job


def batch_set(job: JobRecord) -> str:
    signature = batch_signature(job.request)
    assert signature is not None
    return batch_key(job.request.model, signature)


def beats(client: redis.Redis, worker: str, *jobs: JobRecord) -> None:
    """``worker``'s heartbeat naming ``jobs`` (space separated, as a batch's does)."""
    beat(client, jobs[0].request.model, worker, ttl_seconds=60,
         job_id=" ".join(job.id for job in jobs))


def test_companions_are_the_queued_jobs_of_the_same_signature_in_queue_order(
    store: JobStore, redis_client: redis.Redis, hook_calls: list
) -> None:
    first = leader(store, seed=1)
    other_steps = created(store, steps=5)
    second = created(store, prompt="a dog", seed=2)
    third = created(store, prompt="a fox", seed=3)
    hook_calls.clear()

    claimed = store.claim_companions(first, "w1", max_images=8)

    assert [job.id for job in claimed] == [second.id, third.id]
    for job in claimed:
        assert job.status is JobStatus.RUNNING and job.attempts == 1
        assert job.started_at is not None
        assert redis_client.hget(f"latentd:job:{job.id}", "worker") == "w1"
        assert redis_client.zscore(RUNNING_KEY, job.id) is not None
    assert [(record.id, event) for record, event in hook_calls] == [
        (second.id, EventType.STARTED), (third.id, EventType.STARTED)]
    assert redis_client.zcard(batch_set(first)) == 0
    # The job of another signature still waits, first in its model's queue.
    assert store.get(other_steps.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert store.get(other_steps.id).queue_position == 0  # type: ignore[union-attr]


def test_companions_fill_the_room_left_and_skip_jobs_too_big_for_it(store: JobStore) -> None:
    first = leader(store, num_images=2)
    too_big = created(store, num_images=3)
    fits = created(store, num_images=2)
    after = created(store)

    claimed = store.claim_companions(first, "w1", max_images=2)

    assert [job.id for job in claimed] == [fits.id]
    assert store.get(too_big.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert store.get(after.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert store.claim_companions(first, "w1", max_images=0) == []


def test_companions_come_from_the_leaders_priority_band_only(store: JobStore) -> None:
    first = leader(store, priority=Priority.NORMAL)
    low = created(store, priority=Priority.LOW, queue_level=7)
    normal_flooding_key = created(store, priority=Priority.NORMAL, queue_level=5)
    high = created(store, priority=Priority.HIGH, queue_level=0)

    claimed = store.claim_companions(first, "w1", max_images=8)

    # A low job never rides ahead of normal work; high jobs go by their own tasks first.
    assert [job.id for job in claimed] == [normal_flooding_key.id]
    assert store.get(low.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
    assert store.get(high.id).status is JobStatus.QUEUED  # type: ignore[union-attr]


def test_a_companions_own_task_finds_nothing_to_run(
    store: JobStore, redis_client: redis.Redis
) -> None:
    first = leader(store)
    created(store, seed=2)
    [companion] = store.claim_companions(first, "w1", max_images=4)
    beats(redis_client, "w1", first, companion)

    # Delivered to another worker while the batch runs: the live claim stands.
    assert store.mark_running(companion.id, "w2") is None
    assert redis_client.hget(f"latentd:job:{companion.id}", "worker") == "w1"
    # Delivered after the batch finished it: nothing to run either.
    store.mark_canceled(companion.id, "w1")
    assert store.mark_running(companion.id, "w2") is None


def test_each_job_of_a_batch_is_taken_back_on_its_own_when_its_worker_stops(
    store: JobStore, redis_client: redis.Redis
) -> None:
    first = leader(store)
    created(store, seed=2)
    [companion] = store.claim_companions(first, "w1", max_images=4)
    beats(redis_client, "w1", first, companion)
    assert store.reclaim_stalled() == []  # a heartbeat naming both keeps both

    redis_client.delete(f"latentd:workers:{first.request.model}:w1")  # the worker died
    reaped = {job.id: job for job in store.reclaim_stalled()}

    assert set(reaped) == {first.id, companion.id}
    assert all(job.status is JobStatus.QUEUED for job in reaped.values())
    # Re-queued jobs are companions again for the next worker.
    again = leader(store)
    assert {job.id for job in store.claim_companions(again, "w2", max_images=8)} == {
        first.id, companion.id}


def test_a_job_out_of_attempts_is_left_for_its_own_task_to_fail(
    store: JobStore, redis_client: redis.Redis
) -> None:
    tired = created(store)
    redis_client.hset(f"latentd:job:{tired.id}", "attempts", "2")  # store_settings: 2
    first = leader(store)

    assert store.claim_companions(first, "w1", max_images=4) == []
    failed = store.mark_running(tired.id, "w2")
    assert failed is None
    job = store.get(tired.id)
    assert job is not None and job.error is not None
    assert job.error.code is ErrorCode.WORKER_LOST


def test_canceled_and_deleted_jobs_leave_the_batch_set(
    store: JobStore, redis_client: redis.Redis
) -> None:
    canceled = created(store)
    deleted = created(store)
    kept = created(store)
    store.request_cancel(canceled.id)
    store.delete(deleted.id)
    assert redis_client.zrange(batch_set(kept), 0, -1) == [kept.id]


def test_image_tasks_are_filed_in_no_batch_set(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = created(store, task="image-to-image", strength=0.5)
    assert redis_client.hget(f"latentd:job:{job.id}", "batch") is None
    running = store.mark_running(job.id, "w1")
    assert running is not None and store.claim_companions(running, "w1", max_images=4) == []


def test_a_claim_says_how_many_jobs_wait_in_its_batch_set(store: JobStore) -> None:
    alone = created(store, seed=1, steps=3)
    claim = store.claim(alone.id, "w1")
    assert claim is not None and claim.job.status is JobStatus.RUNNING
    assert claim.batch_waiting == 0  # a worker then does not look for companions

    first = created(store, seed=2)
    created(store, seed=3)
    created(store, seed=4, priority=Priority.LOW)  # another band, but the same set
    created(store, seed=5, steps=7)  # another signature: another set
    claim = store.claim(first.id, "w1")
    assert claim is not None and claim.job.id == first.id
    assert claim.batch_waiting == 2


def test_a_claim_says_whether_the_run_should_stop_already(store: JobStore) -> None:
    job = created(store, seed=1)
    first = store.claim(job.id, "w1")
    assert first is not None and not first.cancel_requested
    store.request_cancel(job.id)  # while running: a flag the run reads at its next step
    # Redelivered to another worker (w1 never beat, so its claim does not stand): the
    # new run learns of the cancel with its claim, before it starts.
    again = store.claim(job.id, "w2")
    assert again is not None and again.cancel_requested


def _calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in client.info("commandstats").items()}


def test_a_claim_is_one_command_to_redis(store: JobStore, redis_client: redis.Redis) -> None:
    store.claim(created(store, seed=1).id, "w1")  # loads the script
    job = created(store, seed=2)
    before = _calls(redis_client)
    claim = store.claim(job.id, "w1")
    after = _calls(redis_client)
    assert claim is not None and claim.job.status is JobStatus.RUNNING
    # (Redis counts the commands a script runs too: only these two tell what was sent.)
    assert after["evalsha"] - before["evalsha"] == 1
    assert after.get("script|exists", 0) == before.get("script|exists", 0)


def test_a_claim_after_redis_lost_its_scripts_loads_them_again(
    store: JobStore, redis_client: redis.Redis
) -> None:
    store.claim(created(store, seed=1).id, "w1")
    redis_client.script_flush()  # what a restart of Redis does to them
    claim = store.claim(created(store, seed=2).id, "w1")
    assert claim is not None and claim.job.status is JobStatus.RUNNING
