"""An owner's jobs: newest first, by status, by cursor, dropping expired ids as it passes."""

from __future__ import annotations

import pytest
import redis

from shared.jobstore import JobStore
from shared.schemas import ErrorCode, JobStatus
from tests.factories import make_record


def create_many(store: JobStore, count: int, owner: str = "public") -> list[str]:
    """Ids of ``count`` new jobs, oldest first."""
    return [store.create(make_record(owner=owner))[0].id for _ in range(count)]


def test_pages_are_newest_first_and_follow_the_cursor(store: JobStore) -> None:
    ids = create_many(store, 5)
    create_many(store, 2, owner="bob")
    page, cursor = store.list_jobs("public", limit=2)
    assert [j.id for j in page] == ids[::-1][:2] and cursor == ids[3]
    page, cursor = store.list_jobs("public", limit=2, cursor=cursor)
    assert [j.id for j in page] == ids[::-1][2:4]
    page, cursor = store.list_jobs("public", limit=2, cursor=cursor)
    assert [j.id for j in page] == ids[:1] and cursor is None
    assert store.list_jobs("public", limit=5) == (store.list_jobs("public")[0], None)


def test_the_status_filter_reads_past_a_batch(store: JobStore) -> None:
    ids = create_many(store, 120)
    for job_id in ids[:3]:
        store.mark_running(job_id)
    store.mark_failed(ids[50], ErrorCode.MODEL_UNAVAILABLE, "gone")
    page, cursor = store.list_jobs("public", status=JobStatus.RUNNING, limit=2)
    assert [j.id for j in page] == [ids[2], ids[1]] and cursor == ids[1]
    assert all(j.status is JobStatus.RUNNING for j in page)
    page, cursor = store.list_jobs("public", status=JobStatus.RUNNING, limit=2, cursor=cursor)
    assert [j.id for j in page] == [ids[0]] and cursor is None
    assert [j.id for j in store.list_jobs("public", status=JobStatus.FAILED)[0]] == [ids[50]]
    assert store.list_jobs("public", status=JobStatus.CANCELED) == ([], None)


def test_a_cursor_must_be_one_of_the_owners_jobs(store: JobStore) -> None:
    bobs = create_many(store, 1, owner="bob")
    create_many(store, 1)
    with pytest.raises(ValueError, match="cursor"):
        store.list_jobs("public", cursor=bobs[0])
    with pytest.raises(ValueError, match="cursor"):
        store.list_jobs("public", cursor="job_" + "0" * 24)


def test_expired_ids_are_skipped_and_dropped_from_the_index(
    store: JobStore, redis_client: redis.Redis
) -> None:
    ids = create_many(store, 60)
    gone = ids[10:58]  # Redis expired these jobs' keys; the owner index still names them
    redis_client.delete(*(f"latentd:job:{job_id}" for job_id in gone))
    page, cursor = store.list_jobs("public", limit=3)
    assert [j.id for j in page] == [ids[59], ids[58], ids[9]] and cursor == ids[9]
    assert redis_client.zcard("latentd:owner:public") == 60 - len(gone)
    page, cursor = store.list_jobs("public", limit=20, cursor=cursor)
    assert [j.id for j in page] == ids[8::-1] and cursor is None


def test_a_limit_below_one_is_refused(store: JobStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.list_jobs("public", limit=0)


class CountingStore(JobStore):
    """Counts the job records a listing reads."""

    reads = 0

    def _read_many(self, job_ids):
        CountingStore.reads += len(job_ids)
        return super()._read_many(job_ids)


def test_a_status_filter_reads_only_jobs_in_that_status(
    redis_client: redis.Redis, store_settings
) -> None:
    store = CountingStore(redis_client, store_settings)
    ids = create_many(store, 300)
    store.mark_running(ids[10])
    CountingStore.reads = 0
    page, cursor = store.list_jobs("public", status=JobStatus.RUNNING)
    assert [j.id for j in page] == [ids[10]] and cursor is None
    assert CountingStore.reads == 1  # not 300: the status index holds just that one


def test_the_status_index_follows_every_change_and_delete(
    store: JobStore, redis_client: redis.Redis
) -> None:
    from shared.jobstore.keys import owner_status_key

    def filed() -> dict[str, list[str]]:
        return {s.value: redis_client.zrange(owner_status_key("public", s.value), 0, -1)
                for s in JobStatus if redis_client.exists(owner_status_key("public", s.value))}

    [job_id] = create_many(store, 1)
    assert filed() == {"queued": [job_id]}
    store.mark_running(job_id)
    assert filed() == {"running": [job_id]}
    store.mark_canceled(job_id)
    assert filed() == {"canceled": [job_id]}
    store.delete(job_id)
    assert filed() == {}


def test_a_cursor_whose_job_changed_status_still_pages_on(store: JobStore) -> None:
    ids = create_many(store, 5)
    page, cursor = store.list_jobs("public", status=JobStatus.QUEUED, limit=2)
    assert [j.id for j in page] == [ids[4], ids[3]] and cursor == ids[3]
    store.mark_running(ids[3])  # the cursor's job is no longer queued
    page, cursor = store.list_jobs("public", status=JobStatus.QUEUED, limit=2, cursor=cursor)
    assert [j.id for j in page] == [ids[2], ids[1]]
