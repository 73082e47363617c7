"""Idempotency-Key: the same body replays the first job while it lives; another conflicts."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.jobstore import IdempotencyConflict, JobStore
from tests.factories import make_record


def test_the_same_key_and_body_replay_the_first_job_as_it_now_stands(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    first, is_new = store.create(make_record(), idempotency_key="k1", fingerprint="aaa")
    assert is_new
    running = store.mark_running(first.id)
    retry = make_record()
    events = listen(retry.id)
    hook_calls.clear()
    again, is_new = store.create(retry, idempotency_key="k1", fingerprint="aaa")
    assert not is_new and again == running
    assert store.get(retry.id) is None
    assert events.drain() == [] and hook_calls == []


def test_the_same_key_with_another_body_conflicts(store: JobStore) -> None:
    first, _ = store.create(make_record(), idempotency_key="k1", fingerprint="aaa")
    retry = make_record()
    with pytest.raises(IdempotencyConflict) as caught:
        store.create(retry, idempotency_key="k1", fingerprint="bbb")
    assert caught.value.job_id == first.id
    assert store.get(retry.id) is None


def test_keys_are_per_owner(store: JobStore) -> None:
    first, _ = store.create(make_record(), idempotency_key="k1", fingerprint="aaa")
    other, is_new = store.create(make_record(owner="bob"), idempotency_key="k1",
                                 fingerprint="bbb")
    assert is_new and other.id != first.id


def test_a_key_whose_job_is_gone_makes_a_new_job(store: JobStore) -> None:
    first, _ = store.create(make_record(), idempotency_key="k1", fingerprint="aaa")
    store.delete(first.id)
    second, is_new = store.create(make_record(), idempotency_key="k1", fingerprint="bbb")
    assert is_new and second.id != first.id
    third, is_new = store.create(make_record(), idempotency_key="k1", fingerprint="bbb")
    assert not is_new and third.id == second.id


def test_racing_requests_with_one_key_make_one_job(store: JobStore) -> None:
    records = [make_record() for _ in range(8)]
    barrier = threading.Barrier(len(records))
    results: list[tuple[str, bool]] = []

    def submit(record) -> None:
        barrier.wait()
        job, is_new = store.create(record, idempotency_key="race", fingerprint="same")
        results.append((job.id, is_new))

    threads = [threading.Thread(target=submit, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(is_new for _, is_new in results) == 1
    assert len(store.list_jobs("public")[0]) == 1
