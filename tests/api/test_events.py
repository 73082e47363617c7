"""JobEvents (``Prefer: wait`` and SSE) against a real Redis and a real job store, no app."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from api.errors import NotFound
from api.services import events as events_module
from api.services.auth import Caller
from api.services.event_hub import EventHub, TooManyStreams
from api.services.events import JobEvents
from api.services.jobs import Submission
from shared.jobstore import AsyncJobReader, JobStore
from shared.records import JobRecord, public_job
from shared.schemas import ErrorCode, JobStatus, Metrics
from shared.settings import Settings
from tests.factories import make_record

pytestmark = pytest.mark.anyio


class ReadCountingStore(JobStore):
    """The real store; counts JobEvents' reads (through ``reader``, the real async reader)
    and can act just before the first one (as a racing worker)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.first_read = threading.Event()
        self.before_first_read: Callable[[], object] | None = None


class CountingReader(AsyncJobReader):
    def __init__(self, client: aioredis.Redis, counts: ReadCountingStore) -> None:
        super().__init__(client)
        self._counts = counts

    async def get(self, job_id: str) -> JobRecord | None:
        counts = self._counts
        if counts.reads == 0 and counts.before_first_read is not None:
            counts.before_first_read()
        counts.reads += 1
        record = await super().get(job_id)
        counts.first_read.set()
        return record


PUBLIC = Caller("public")


@pytest.fixture
def store(redis_url: str) -> Iterator[ReadCountingStore]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield ReadCountingStore(client, Settings(job_ttl_seconds=3600))
    client.close()


@pytest.fixture
async def events(redis_url: str, store: ReadCountingStore) -> AsyncIterator[JobEvents]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    hub = EventHub(client, max_streams=100, max_streams_per_owner=100)
    yield JobEvents(hub=hub, reader=CountingReader(client, store))
    await hub.aclose()
    await client.aclose()


@pytest.fixture
def lost_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pub/sub loses every message (JobEvents listens where nothing is published), and
    the quiet re-read comes quickly."""
    monkeypatch.setattr(JobStore, "channel", staticmethod(lambda job_id: "latentd:nowhere"))
    monkeypatch.setattr(events_module, "RECHECK_SECONDS", 0.2)


def in_thread(action: Callable[[], object], after: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=lambda: after.wait(10) and action(), daemon=True)
    thread.start()
    return thread


def run_to_success(store: JobStore, job_id: str) -> JobRecord:
    store.mark_running(job_id)
    return store.mark_succeeded(job_id, [], Metrics(total_seconds=1.0))


async def collect(stream: AsyncIterator[dict[str, str]]) -> list[tuple[str, dict]]:
    return [(sse["event"], json.loads(sse["data"])) async for sse in stream]


# -- Prefer: wait ----------------------------------------------------------------------


async def test_wait_returns_the_record_of_the_completed_event(
    events: JobEvents, store: ReadCountingStore
) -> None:
    queued, _ = store.create(make_record())
    finished: list[JobRecord] = []
    thread = in_thread(lambda: finished.append(run_to_success(store, queued.id)),
                       after=store.first_read)
    result = await events.wait(queued, 10)
    thread.join()
    assert result == finished[0]  # the job exactly as mark_succeeded wrote it
    assert store.reads == 1  # the read after subscribing, and none per event


async def test_wait_runs_out_with_the_latest_state_from_the_events(
    events: JobEvents, store: ReadCountingStore
) -> None:
    queued, _ = store.create(make_record())
    written: list[JobRecord] = []

    def start_and_step() -> None:
        store.mark_running(queued.id)
        written.append(store.update_progress(queued.id, 2, 4, 0.5))

    thread = in_thread(start_and_step, after=store.first_read)
    result = await events.wait(queued, 1)
    thread.join()
    assert result == written[0] and result.progress.step == 2
    assert store.reads == 1


async def test_wait_returns_a_finished_job_at_once(
    events: JobEvents, store: ReadCountingStore
) -> None:
    job_id = store.create(make_record())[0].id
    done = run_to_success(store, job_id)
    assert await events.wait(done, 10) is done
    queued = store.create(make_record())[0]
    assert await events.wait(queued, 0) is queued
    assert store.reads == 0


async def test_wait_rechecks_when_quiet_and_sees_a_finish_it_missed(
    events: JobEvents, store: ReadCountingStore, lost_messages: None
) -> None:
    queued, _ = store.create(make_record())
    finished: list[JobRecord] = []
    thread = in_thread(lambda: finished.append(run_to_success(store, queued.id)),
                       after=store.first_read)
    result = await events.wait(queued, 10)
    thread.join()
    assert result == finished[0] and store.reads >= 2


# -- a submit that waits ---------------------------------------------------------------


async def test_a_waiting_submit_answers_its_job_once_it_has_finished(
    events: JobEvents, store: ReadCountingStore
) -> None:
    finished: list[JobRecord] = []
    threads: list[threading.Thread] = []

    def submit() -> Submission:
        queued, _ = store.create(make_record())
        threads.append(in_thread(lambda: finished.append(run_to_success(store, queued.id)),
                                 after=store.first_read))
        return Submission(queued, created=True)

    outcome = await events.submit_and_wait(submit, "public", 10)
    threads[0].join()
    assert outcome.job == finished[0] and outcome.wait_error is None
    assert outcome.submission.job.status is JobStatus.QUEUED
    assert store.reads == 1


async def test_a_waiting_submit_over_the_stream_cap_is_refused_before_it_submits(
    redis_url: str, store: ReadCountingStore
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    hub = EventHub(client, max_streams=100, max_streams_per_owner=1)
    events = JobEvents(hub=hub, reader=CountingReader(client, store))
    submitted: list[JobRecord] = []

    def submit() -> Submission:
        submitted.append(store.create(make_record())[0])
        return Submission(submitted[-1], created=True)

    try:
        async with hub.subscribe("latentd:events:job_elsewhere", "public"):
            with pytest.raises(TooManyStreams):
                await events.submit_and_wait(submit, "public", 10)
            assert submitted == []
            # A submit that does not wait takes no place.
            assert (await events.submit_and_wait(submit, "public", 0)).job == submitted[-1]
        # The slot is free again; the wait it holds follows the job within it (a cap of
        # one: counted once), until the wait runs out.
        outcome = await events.submit_and_wait(submit, "public", 0.2)
        assert [outcome.job] == submitted[1:] and outcome.wait_error is None
        assert hub.streams == 0
    finally:
        await hub.aclose()
        await client.aclose()


async def test_a_waiting_submit_whose_wait_fails_answers_the_job_as_stored(
    events: JobEvents, store: ReadCountingStore
) -> None:
    """Once the job exists, a failed wait (Redis went away for the read) is handed back
    beside the job, never raised: the caller must name the job."""
    queued, _ = store.create(make_record())

    def lose_redis() -> None:
        raise redis.ConnectionError("Redis went away")

    store.before_first_read = lose_redis
    outcome = await events.submit_and_wait(
        lambda: Submission(queued, created=True), "public", 10)
    assert outcome.job == queued
    assert isinstance(outcome.wait_error, redis.ConnectionError)
    assert events.hub.streams == 0


# -- SSE ---------------------------------------------------------------------------------


async def test_stream_relays_each_event_with_its_own_job_and_ends(
    events: JobEvents, store: ReadCountingStore
) -> None:
    queued, _ = store.create(make_record())
    stream = await events.stream(queued.id, PUBLIC)
    first = await anext(stream)
    running = store.mark_running(queued.id)
    steps = [store.update_progress(queued.id, n, 4, 0.1) for n in (1, 2)]
    done = store.mark_succeeded(queued.id, [], Metrics(total_seconds=1.0))
    received = [first] + [sse async for sse in stream]  # ends by itself after completed

    written = [queued, running, *steps, done]
    assert [sse["event"] for sse in received] == [
        "queued", "started", "progress", "progress", "completed"]
    assert [sse["data"] for sse in received] == [public_job(r).model_dump_json() for r in written]
    data = [json.loads(sse["data"]) for sse in received]
    assert [d["status"] for d in data] == ["queued", "running", "running", "running", "succeeded"]
    assert [d["progress"]["step"] for d in data] == [0, 0, 1, 2, 2]
    assert "owner" not in data[0]
    assert store.reads == 1


async def test_stream_does_not_repeat_events_from_before_its_first_read(
    events: JobEvents, store: ReadCountingStore
) -> None:
    queued, _ = store.create(make_record())
    # Published after the stream subscribed, before it read: in its buffer and in the read.
    store.before_first_read = lambda: (store.mark_running(queued.id),
                                       store.update_progress(queued.id, 1, 4, None))
    stream = await events.stream(queued.id, PUBLIC)
    first = await anext(stream)
    failed = store.mark_failed(queued.id, ErrorCode.GENERATION_FAILED, "it broke")
    rest = await collect(stream)  # ends at completed: a repeat would have come before it
    assert first["event"] == "started" and json.loads(first["data"])["progress"]["step"] == 1
    assert [(name, data["status"]) for name, data in rest] == [("completed", "failed")]
    assert rest[0][1] == json.loads(public_job(failed).model_dump_json())


async def test_stream_of_a_finished_job_sends_completed_and_ends(
    events: JobEvents, store: ReadCountingStore
) -> None:
    job_id = store.create(make_record())[0].id
    run_to_success(store, job_id)
    received = await collect(await events.stream(job_id, PUBLIC))
    assert [(name, data["status"]) for name, data in received] == [("completed", "succeeded")]


async def test_stream_of_a_missing_or_someone_elses_job_is_not_found(
    events: JobEvents, store: ReadCountingStore
) -> None:
    with pytest.raises(NotFound):
        await events.stream("job_" + "0" * 24, PUBLIC)
    theirs = store.create(make_record(owner="bob"))[0]
    with pytest.raises(NotFound):
        await events.stream(theirs.id, PUBLIC)


async def test_a_quiet_stream_rechecks_and_ends_on_a_finish_it_missed(
    events: JobEvents, store: ReadCountingStore, lost_messages: None
) -> None:
    queued, _ = store.create(make_record())
    stream = await events.stream(queued.id, PUBLIC)
    assert (await anext(stream))["event"] == "queued"
    canceled = store.request_cancel(queued.id)
    received = await collect(stream)
    assert received == [
        ("completed", json.loads(public_job(canceled).model_dump_json()))]


async def test_a_quiet_stream_ends_when_its_job_is_deleted(
    events: JobEvents, store: ReadCountingStore, lost_messages: None
) -> None:
    queued, _ = store.create(make_record())
    stream = await events.stream(queued.id, PUBLIC)
    assert (await anext(stream))["event"] == "queued"
    store.delete(queued.id)
    assert await collect(stream) == []
