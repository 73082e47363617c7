"""Job reads on the event loop: concurrent reads of several jobs are one script call."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from shared.jobstore import AsyncJobReader, JobStore
from tests.factories import make_record

pytestmark = pytest.mark.anyio


def _script_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def test_concurrent_reads_of_several_jobs_are_one_script_call_and_each_as_stored(
    store: JobStore, redis_client: redis.Redis, async_redis_client: aioredis.Redis
) -> None:
    jobs = [store.create(make_record())[0] for _ in range(3)]
    reader = AsyncJobReader(async_redis_client)
    await reader.get(jobs[0].id)  # loads the script (one EVALSHA, then SCRIPT LOAD + EVALSHA)
    before = _script_calls(redis_client)

    ids = [job.id for job in jobs] + ["job_" + "0" * 24]
    records = await asyncio.gather(*(reader.get(job_id) for job_id in ids))

    assert _script_calls(redis_client) == before + 1
    assert records[:3] == [store.get(job.id) for job in jobs]
    assert [record.queue_position for record in records[:3]] == [0, 1, 2]  # type: ignore[union-attr]
    assert records[3] is None
