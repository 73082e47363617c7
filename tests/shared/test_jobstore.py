"""The job state machine against a real redis-server: every transition's returned record,
the one event it publishes (the same record), and the moves it must refuse."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from shared.jobstore import JobStore
from shared.jobstore.wire import LUA_LIBRARY
from shared.records import JobRecord, OutputImage
from shared.schemas import ErrorCode, EventType, JobStatus, Metrics, Priority, Progress
from tests.factories import make_plan, make_record

IMAGE = OutputImage(index=0, seed=1, width=64, height=64, format="png")


def created(store: JobStore, **overrides) -> JobRecord:
    record, is_new = store.create(make_record(**overrides))
    assert is_new
    return record


def test_create_returns_and_publishes_the_stored_queued_job(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    record = make_record(metadata={"k": "v"})
    events = listen(record.id)
    before = datetime.now(UTC)
    stored, is_new = store.create(record)
    assert is_new
    assert stored.id == record.id and stored.owner == "public"
    assert stored.status is JobStatus.QUEUED and stored.queue_position == 0
    assert stored.request == record.request and stored.metadata == {"k": "v"}
    assert stored.created_at == stored.updated_at
    assert abs((stored.created_at - before).total_seconds()) < 5  # stamped by the store
    assert stored.attempts == 0 and stored.started_at is None and stored.webhook_attempts == []
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.QUEUED, stored)]
    assert hook_calls == [(stored, EventType.QUEUED)]
    assert store.get(record.id) == stored
    assert store.get("job_" + "0" * 24) is None


def test_create_refuses_a_record_not_queued_or_an_id_in_use(store: JobStore) -> None:
    with pytest.raises(ValueError, match="queued"):
        store.create(make_record(status=JobStatus.RUNNING))
    record = created(store)
    store.mark_running(record.id)
    with pytest.raises(ValueError, match="exists"):
        store.create(make_record(id=record.id))
    assert store.get(record.id).status is JobStatus.RUNNING


def test_job_ids_are_job_and_24_hex() -> None:
    job_id = JobStore.new_job_id()
    assert job_id.startswith("job_") and len(job_id) == 28
    int(job_id[4:], 16)
    assert JobStore.channel(job_id) == f"latentd:events:{job_id}"


def test_each_transition_returns_and_publishes_the_record_it_wrote(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    job_id = created(store).id
    events = listen(job_id)
    hook_calls.clear()

    running = store.mark_running(job_id)
    assert running.status is JobStatus.RUNNING and running.attempts == 1
    assert running.started_at == running.updated_at and running.queue_position is None
    step = store.update_progress(job_id, 2, 4, 1.5)
    assert step.progress == Progress(step=2, total_steps=4, eta_seconds=1.5)
    assert step.status is JobStatus.RUNNING and step.started_at == running.started_at
    done = store.mark_succeeded(job_id, [IMAGE], Metrics(total_seconds=1.25))
    assert done.status is JobStatus.SUCCEEDED and done.images == [IMAGE]
    assert done.metrics.total_seconds == 1.25 and done.progress.step == 2
    assert done.finished_at == done.updated_at > done.started_at > done.created_at

    expected = [(EventType.STARTED, running), (EventType.PROGRESS, step),
                (EventType.COMPLETED, done)]
    assert [(e.type, e.job) for e in events.drain()] == expected
    assert [(event, record) for record, event in hook_calls] == expected
    assert store.get(job_id) == done


def test_every_write_has_a_later_updated_at(store: JobStore) -> None:
    job_id = created(store).id
    store.mark_running(job_id)
    stamps = [store.update_progress(job_id, i, 100, None).updated_at for i in range(100)]
    assert stamps == sorted(set(stamps))


def test_failing_a_queued_job_is_one_completed_event_and_no_start(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    job_id = created(store).id
    events = listen(job_id)
    hook_calls.clear()
    failed = store.mark_failed(job_id, ErrorCode.MODEL_UNAVAILABLE, "no such weights")
    assert failed.status is JobStatus.FAILED and failed.attempts == 0
    assert failed.started_at is None and failed.finished_at == failed.updated_at
    assert failed.error.code is ErrorCode.MODEL_UNAVAILABLE
    assert failed.error.message == "no such weights"
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, failed)]
    assert hook_calls == [(failed, EventType.COMPLETED)]


def test_a_terminal_job_never_changes_and_publishes_nothing(
    store: JobStore, listen: Callable
) -> None:
    job_id = created(store).id
    store.mark_running(job_id)
    failed = store.mark_failed(job_id, ErrorCode.GENERATION_FAILED, "it broke")
    events = listen(job_id)
    assert store.mark_succeeded(job_id, [IMAGE], Metrics()) is None
    assert store.mark_failed(job_id, ErrorCode.TIMEOUT, "again") is None
    assert store.mark_canceled(job_id) is None
    assert store.mark_running(job_id) is None
    assert store.update_progress(job_id, 3, 4, None) is None
    assert store.request_cancel(job_id) == failed
    assert events.drain() == []
    assert store.get(job_id) == failed


def test_progress_and_success_need_a_running_job(store: JobStore, listen: Callable) -> None:
    queued = created(store)
    events = listen(queued.id)
    assert store.update_progress(queued.id, 1, 4, None) is None
    assert store.mark_succeeded(queued.id, [IMAGE], Metrics()) is None
    assert events.drain() == []
    assert store.get(queued.id) == queued
    assert store.mark_running("job_" + "0" * 24) is None


def test_racing_transitions_have_exactly_one_winner(store: JobStore) -> None:
    for _ in range(20):
        job_id = created(store).id
        store.mark_running(job_id)
        results: list[JobRecord | None] = []
        barrier = threading.Barrier(2)

        def finish(action: Callable, job_id: str = job_id, barrier=barrier, results=results):
            barrier.wait()
            results.append(action(job_id))

        threads = [
            threading.Thread(target=finish, args=(lambda j: store.mark_succeeded(j, [], Metrics()),)),
            threading.Thread(target=finish, args=(store.mark_canceled,)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.get(job_id) == winners[0]


def test_a_redelivered_job_restarts_and_fails_worker_lost_after_max_attempts(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    job_id = created(store).id  # store_settings: task_max_attempts=2
    first = store.mark_running(job_id)
    store.update_progress(job_id, 3, 4, None)
    second = store.mark_running(job_id)  # the worker died; the task came back
    assert second.attempts == 2 and second.progress == Progress()
    assert second.started_at > first.started_at
    events = listen(job_id)
    hook_calls.clear()
    assert store.mark_running(job_id) is None
    final = store.get(job_id)
    assert final.status is JobStatus.FAILED and final.attempts == 2
    assert final.error.code is ErrorCode.WORKER_LOST and "2 times" in final.error.message
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, final)]
    assert hook_calls == [(final, EventType.COMPLETED)]


def test_cancel_of_a_queued_job_is_immediate(store: JobStore, listen: Callable) -> None:
    job_id = created(store).id
    events = listen(job_id)
    canceled = store.request_cancel(job_id)
    assert canceled.status is JobStatus.CANCELED and canceled.error.code is ErrorCode.CANCELED
    assert canceled.finished_at == canceled.updated_at and canceled.queue_position is None
    assert [(e.type, e.job) for e in events.drain()] == [(EventType.COMPLETED, canceled)]
    assert store.mark_running(job_id) is None  # a canceled job never runs


def test_cancel_of_a_running_job_sets_the_flag_the_worker_polls(
    store: JobStore, listen: Callable, hook_calls: list
) -> None:
    job_id = created(store).id
    running = store.mark_running(job_id)
    assert not store.is_cancel_requested(job_id)
    events = listen(job_id)
    hook_calls.clear()
    assert store.request_cancel(job_id) == running  # unchanged until the worker stops
    assert store.is_cancel_requested(job_id)
    assert events.drain() == [] and hook_calls == []
    canceled = store.mark_canceled(job_id)
    assert canceled.status is JobStatus.CANCELED and canceled.error.code is ErrorCode.CANCELED
    assert [e.type for e in events.drain()] == [EventType.COMPLETED]
    assert store.request_cancel("job_" + "0" * 24) is None


def test_queue_position_follows_priority_then_age(store: JobStore) -> None:
    first = created(store)
    second = created(store)
    urgent = created(store, request=make_plan(priority=Priority.HIGH))
    late = created(store, request=make_plan(priority=Priority.LOW))
    other_model = created(store, request=make_plan(model="other"))
    assert [store.get(j.id).queue_position for j in (urgent, first, second, late)] == [0, 1, 2, 3]
    assert other_model.queue_position == 0
    assert store.mark_running(urgent.id).queue_position is None
    assert store.get(second.id).queue_position == 1
    store.mark_failed(first.id, ErrorCode.MODEL_UNAVAILABLE, "gone")
    assert store.get(second.id).queue_position == 0


def test_every_key_expires_and_delete_removes_everything(
    store: JobStore, redis_client: redis.Redis
) -> None:
    record = created(store)
    assert 3500 < redis_client.ttl(f"latentd:job:{record.id}") <= 3600
    assert 3500 < redis_client.ttl("latentd:owner:public") <= 3600
    assert store.delete(record.id)
    assert store.get(record.id) is None
    assert store.list_jobs("public") == ([], None)
    assert store.pop_expired(now=record.created_at.timestamp() + 7200) == []
    assert redis_client.zcard("latentd:queue:tiny-random") == 0
    assert not store.delete(record.id)
    assert store.mark_running(record.id) is None  # a worker holding the deleted job's task


def test_a_failing_hook_does_not_undo_the_transition(redis_client, store_settings) -> None:
    def broken_hook(record: JobRecord, event: EventType) -> None:
        raise ConnectionError("webhook queue down")

    store = JobStore(redis_client, store_settings, on_event=broken_hook)
    record, is_new = store.create(make_record())
    assert is_new and store.mark_running(record.id).status is JobStatus.RUNNING


def test_stored_json_comes_back_exactly(store: JobStore) -> None:
    # What a cjson round trip would break: empty lists, 17-digit floats, escapes.
    metadata = {"empty": [], "obj": {}, "f": 0.1 + 0.2, "s": 'é/"\n\\', "n": None}
    record = created(store, metadata=metadata, warnings=[])
    assert record.metadata == metadata and record.warnings == []
    store.mark_running(record.id)
    done = store.mark_succeeded(record.id, [], Metrics(inference_seconds=1 / 3))
    assert done.images == [] and done.metrics.inference_seconds == 1 / 3


def test_decode_event_takes_text_or_bytes(store: JobStore, listen: Callable) -> None:
    record = make_record()
    events = listen(record.id)
    stored, _ = store.create(record)
    message = events.drain()[0].model_dump_json()
    assert JobStore.decode_event(message.encode()).job == stored


@pytest.mark.parametrize("when", [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 12, 31, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2100, 3, 1, 0, 0, 0, 500000, tzinfo=UTC),
])
def test_lua_clock_writes_utc_iso_text(redis_client: redis.Redis, when: datetime) -> None:
    us = int(when.timestamp()) * 1_000_000 + when.microsecond
    text = redis_client.eval(LUA_LIBRARY + "return iso(tonumber(ARGV[1]))", 0, str(us))
    assert text == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
