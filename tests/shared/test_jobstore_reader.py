"""Job reads on the event loop: concurrent reads share one script call, none is stale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from shared.jobstore import AsyncJobReader, JobStore
from shared.jobstore.reader import ReadCoalescer
from tests.factories import make_record

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingReads:
    """A ``read_many`` that answers ``"<key>@<call number>"`` and keeps each call's keys;
    ``hold`` keeps a call from answering until it is set."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.fail_next: Exception | None = None

    async def __call__(self, keys: list[str]) -> list[str | None]:
        self.calls.append(list(keys))
        self.started.set()
        await self.hold.wait()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return [None if key.startswith("missing") else f"{key}@{len(self.calls)}"
                for key in keys]


async def test_reads_asked_together_go_in_one_call_each_key_once() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads)
    answers = await asyncio.gather(*(coalescer.read(key)
                                     for key in ("a", "b", "a", "missing-c")))
    assert answers == ["a@1", "b@1", "a@1", None]
    assert reads.calls == [["a", "b", "missing-c"]]


async def test_a_read_asked_during_a_call_waits_for_the_next_one() -> None:
    # Freshness: a call already on its way may have read the job before this read was
    # asked for, so its answer is not this read's.
    reads = RecordingReads()
    reads.hold.clear()
    coalescer = ReadCoalescer(reads)
    first = coalescer.read("a")
    await reads.started.wait()
    later = [coalescer.read("a"), coalescer.read("b")]
    reads.hold.set()
    assert await first == "a@1"
    assert await asyncio.gather(*later) == ["a@2", "b@2"]
    assert reads.calls == [["a"], ["a", "b"]]


async def test_a_failed_call_fails_its_reads_and_the_next_call_still_goes_out() -> None:
    reads = RecordingReads()
    reads.hold.clear()
    reads.fail_next = redis.ConnectionError("Redis went away")
    coalescer = ReadCoalescer(reads)
    failing = coalescer.read("a")
    await reads.started.wait()
    after = coalescer.read("b")
    reads.hold.set()
    with pytest.raises(redis.ConnectionError, match="went away"):
        await failing
    assert await after == "b@2"


async def test_a_read_given_up_on_leaves_the_others_answered_and_is_not_sent_alone() -> None:
    reads = RecordingReads()
    reads.hold.clear()
    coalescer = ReadCoalescer(reads)
    first = coalescer.read("a")
    await reads.started.wait()
    abandoned, kept = coalescer.read("x"), coalescer.read("b")
    abandoned.cancel()
    lone = coalescer.read("y")
    lone.cancel()
    reads.hold.set()
    assert (await first, await kept) == ("a@1", "b@2")
    assert reads.calls == [["a"], ["b"]]  # "x" and "y" were no longer wanted when sent


async def test_a_call_holds_at_most_its_limit_and_the_rest_follow() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads, max_per_call=2)
    answers = await asyncio.gather(*(coalescer.read(key) for key in "abcde"))
    assert answers == ["a@1", "b@1", "c@2", "d@2", "e@3"]
    assert reads.calls == [["a", "b"], ["c", "d"], ["e"]]


async def test_a_lone_read_goes_out_without_waiting_for_company() -> None:
    reads = RecordingReads()
    coalescer = ReadCoalescer(reads)
    assert await asyncio.wait_for(coalescer.read("a"), timeout=1) == "a@1"
    assert await asyncio.wait_for(coalescer.read("b"), timeout=1) == "b@2"


@pytest.fixture
async def async_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def _script_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_reads_of_several_jobs_are_one_script_call_and_each_as_stored(
    store: JobStore, redis_client: redis.Redis, async_client: aioredis.Redis
) -> None:
    jobs = [store.create(make_record())[0] for _ in range(3)]
    reader = AsyncJobReader(async_client)
    await reader.get(jobs[0].id)  # loads the script (one EVALSHA, then SCRIPT LOAD + EVALSHA)
    before = _script_calls(redis_client)

    ids = [job.id for job in jobs] + ["job_" + "0" * 24]
    records = await asyncio.gather(*(reader.get(job_id) for job_id in ids))

    assert _script_calls(redis_client) == before + 1
    assert records[:3] == [store.get(job.id) for job in jobs]
    assert [record.queue_position for record in records[:3]] == [0, 1, 2]  # type: ignore[union-attr]
    assert records[3] is None
