"""The API process's one pub/sub connection: fan-out to followers, caps, clean leaving."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from api.errors import Unavailable
from api.services.event_hub import EventHub, TooManyStreams
from shared.jobstore import JobStore
from shared.schemas import Metrics
from shared.settings import Settings
from tests.api.conftest import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def client(async_redis_client: aioredis.Redis) -> aioredis.Redis:
    return async_redis_client


def pubsub_connections(redis_url: str) -> int:
    clients = redis.Redis.from_url(redis_url).client_list()
    return sum(1 for c in clients if int(c.get("sub", 0)) > 0)


async def test_many_followers_share_one_connection_and_get_their_own_messages(
    client: aioredis.Redis, redis_url: str
) -> None:
    hub = EventHub(client, max_streams=100, max_streams_per_owner=100)
    try:
        async with contextlib_all(hub, [f"ch:{i % 10}" for i in range(40)]) as followers:
            assert pubsub_connections(redis_url) == 1
            for i in range(10):
                await client.publish(f"ch:{i}", f"hello {i}")
            for n, follower in enumerate(followers):
                assert await follower.next(5) == f"hello {n % 10}"
                assert await follower.next(0.05) is None  # nothing of other channels
        assert hub.streams == 0
        numsub = await client.pubsub_numsub(*[f"ch:{i}" for i in range(10)])
        assert all(count == 0 for _, count in numsub)  # unsubscribed once nobody follows
    finally:
        await hub.aclose()


class contextlib_all:
    """Enter ``hub.subscribe(channel, "owner")`` for every channel at once."""

    def __init__(self, hub: EventHub, channels: list[str]):
        self.contexts = [hub.subscribe(channel, "owner") for channel in channels]

    async def __aenter__(self):
        return list(await asyncio.gather(*(c.__aenter__() for c in self.contexts)))

    async def __aexit__(self, *exc: object) -> None:
        for context in self.contexts:
            await context.__aexit__(None, None, None)


async def test_followers_are_capped_per_owner_and_in_total(client: aioredis.Redis) -> None:
    hub = EventHub(client, max_streams=3, max_streams_per_owner=2)
    try:
        async with hub.subscribe("a", "alice"), hub.subscribe("b", "alice"):
            with pytest.raises(TooManyStreams) as per_owner:
                async with hub.subscribe("c", "alice"):
                    pass
            assert per_owner.value.status_code == 429
            assert per_owner.value.headers["Retry-After"]
            async with hub.subscribe("c", "bob"):
                with pytest.raises(Unavailable) as total:
                    async with hub.subscribe("d", "carol"):
                        pass
                assert total.value.status_code == 503
        # Slots come back when followers leave.
        async with hub.subscribe("a", "alice"), hub.subscribe("b", "alice"):
            assert hub.streams == 2
    finally:
        await hub.aclose()


async def test_a_cancelled_follower_gives_its_slot_back(client: aioredis.Redis) -> None:
    hub = EventHub(client, max_streams=10, max_streams_per_owner=1)
    try:
        entered = asyncio.Event()

        async def follow() -> None:
            async with hub.subscribe("a", "alice") as follower:
                entered.set()
                await follower.next(60)

        task = asyncio.create_task(follow())
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hub.streams == 0
        async with hub.subscribe("a", "alice"):
            pass
    finally:
        await hub.aclose()


def test_sse_streams_over_the_per_key_cap_get_a_429(redis_url: str, tmp_path) -> None:
    """Over real HTTP (uvicorn in a thread): two connections, the second over the cap. A
    submit that would wait is refused before its job is stored, so a retry makes no
    second job."""
    from api.main import create_app
    from shared.heartbeat import beat

    settings = Settings(redis_url=redis_url, data_dir=tmp_path, default_model="tiny-random",
                        max_streams_per_key=1)
    beat(redis.Redis.from_url(redis_url), "tiny-random", "test-worker", ttl_seconds=600)
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=10) as http:
        job_id = http.post("/v1/jobs", json={"prompt": "a cat"}).json()["id"]
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as first:
            lines = first.iter_lines()
            assert first.status_code == 200 and next(lines) == "event: queued"
            with httpx.Client(base_url=base, timeout=10) as other:
                second = other.get(f"/v1/jobs/{job_id}/events")
                assert second.status_code == 429
                assert second.json()["error"]["code"] == "too_many_streams"
                assert second.headers["Retry-After"]
                waited = other.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
                assert waited.status_code == 429
                refused = other.post("/v1/jobs", json={"prompt": "a dog"},
                                     headers={"Prefer": "wait=1"})
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "too_many_streams"
                assert [job["id"] for job in other.get("/v1/jobs").json()["jobs"]] == [job_id]
            # Finish the job: the open stream ends by itself after "completed".
            store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True),
                             settings)
            store.mark_running(job_id)
            store.mark_succeeded(job_id, [], Metrics())
            assert [line for line in lines if line.startswith("event:")][-1] == (
                "event: completed")
        # The slot is free again.
        again = http.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
        assert again.status_code == 200
        # The same submit is stored now, and waited on until the wait runs out (no worker).
        stored = http.post("/v1/jobs", json={"prompt": "a dog"}, headers={"Prefer": "wait=1"})
        assert stored.status_code == 202 and stored.headers["Preference-Applied"] == "wait=1"
        assert stored.json()["status"] == "queued"
        assert len(http.get("/v1/jobs").json()["jobs"]) == 2
