"""API key lookups on the event loop: keys asked for at once are one HMGET, none stale."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from shared.api_keys import ApiKeyStore, AsyncApiKeyLookup

pytestmark = pytest.mark.anyio


@pytest.fixture
def lookup(async_redis_client: aioredis.Redis) -> AsyncApiKeyLookup:
    return AsyncApiKeyLookup(async_redis_client)


def _hmget_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


async def test_keys_looked_up_at_once_are_one_hmget_and_each_found_as_stored(
    redis_client: redis.Redis, lookup: AsyncApiKeyLookup
) -> None:
    store = ApiKeyStore(redis_client)
    (alice, alice_secret), (admin, admin_secret) = store.create("alice"), store.create("ops", True)
    before = _hmget_calls(redis_client)

    found = await asyncio.gather(lookup.find(alice_secret), lookup.find(admin_secret),
                                 lookup.find("ltd_not-a-key"), lookup.find(alice_secret))

    assert _hmget_calls(redis_client) == before + 1
    assert found == [alice, admin, None, alice]
    assert found[1] is not None and found[1].admin


async def test_a_key_revoked_before_the_lookup_is_not_found(
    redis_client: redis.Redis, lookup: AsyncApiKeyLookup
) -> None:
    store = ApiKeyStore(redis_client)
    key, secret = store.create("bob")
    assert await lookup.find(secret) == key
    assert store.revoke(key.id)
    assert await lookup.find(secret) is None
